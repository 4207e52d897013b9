"""The Gradio demo, driven like a user would: its HTTP API through `gradio_client` and the page in headless Chromium.

One app (real SmolLM2-135M-Instruct, the shipped default hypernetwork, short answers) is launched on 127.0.0.1 for
the whole module; every `gradio_client.Client` is a separate browser session. Hub pushes and pulls go to the fake Hub.
"""

from __future__ import annotations

import os
import re
import socket
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

from peft_shine.adapters.contexts import context_sha256
from peft_shine.cli import build_parser
from peft_shine.demo.app import build_demo, launch_options
from peft_shine.demo.engine import DemoEngine, scrub
from peft_shine.demo.hub import resolve_token
from peft_shine.prompting import generate_answers
from peft_shine.shipped import SHIPPED_NAME


pytest_plugins = ["hub_fixtures"]

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
CONTEXT = "Zorbia is a small island nation. Its capital is Plimpton, on the river Quell."
QUESTION = "What is the capital of Zorbia?"
CLIENT_TIMEOUT_S = 600.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def app() -> Iterator[tuple[str, DemoEngine]]:
    """The demo on a free local port: ``(url, engine)``. One torch thread: with 2 cores shared by other processes,
    two OpenMP threads make each generation step several times slower, not faster."""
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    engine = DemoEngine(max_new_tokens=6)
    demo = build_demo(engine)
    demo.launch(**launch_options(prevent_thread_lock=True, server_name="127.0.0.1", server_port=_free_port(),
                                 quiet=True))
    try:
        yield demo.local_url, engine
    finally:
        demo.close()
        engine.close()
        torch.set_num_threads(threads)


def new_session(app: tuple[str, DemoEngine]) -> Client:
    """A new browser session on the app. httpx's default 5 s read timeout would race the CPU: a request that
    arrives while the server generates for another session (one torch thread, a shared machine) can wait longer
    than that, so every request of the client may wait up to `CLIENT_TIMEOUT_S`, far beyond any generation here."""
    return Client(app[0], verbose=False, httpx_kwargs={"timeout": httpx.Timeout(CLIENT_TIMEOUT_S)})


def adapter_of(engine: DemoEngine, context: str):
    """The engine's adapter generated from ``context`` (exactly one must exist)."""
    found = [a for a in engine.adapters.values() if a.context_sha256 == context_sha256(context)]
    assert len(found) == 1, f"expected one adapter for the context, found {len(found)}"
    return found[0]


def test_generate_chat_compare_and_download_a_loadable_peft_folder(app, tmp_path):
    from peft import PeftModel
    from peft.utils import get_peft_model_state_dict

    from peft_shine.storage.base_models import load_base_model

    client = new_session(app)
    status, zip_path, chat = client.predict(CONTEXT, api_name="/generate")
    assert status.startswith("✓ **Adapter ready**") and " MB" in status and chat == []
    assert Path(zip_path).name == "shine-adapter.zip" and "shine-demo-" not in zip_path

    cleared, history = client.predict(QUESTION, [], api_name="/chat")
    assert cleared == "" and [m["role"] for m in history] == ["user", "assistant"]
    _, history = client.predict("And its river?", history, api_name="/chat")
    assert len(history) == 4 and all(isinstance(m["content"], list | str) for m in history)

    answers = client.predict(QUESTION, api_name="/compare")
    assert len(answers) == 3 and all(isinstance(answer, str) and answer for answer in answers)

    with zipfile.ZipFile(zip_path) as archive:
        assert sorted(archive.namelist()) == ["shine-adapter/README.md", "shine-adapter/adapter_config.json",
                                              "shine-adapter/adapter_model.safetensors"]
        card = archive.read("shine-adapter/README.md").decode()
        assert context_sha256(CONTEXT) in card and "/tmp" not in card  # our card, no server path
        archive.extractall(tmp_path)
    engine = app[1]
    adapter = adapter_of(engine, CONTEXT)
    base, _ = load_base_model()
    loaded = PeftModel.from_pretrained(base, tmp_path / "shine-adapter")
    assert type(loaded.get_base_model()) is type(engine.hypernetwork().model.base_lm)
    expected = get_peft_model_state_dict(engine.hypernetwork().model.peft_model, adapter_name=adapter.name,
                                         save_embedding_layers=False)
    actual = get_peft_model_state_dict(loaded, save_embedding_layers=False)
    assert expected.keys() == actual.keys()
    assert all(torch.equal(expected[key], actual[key]) for key in expected)


def test_sessions_never_see_each_others_adapters(app):
    engine = app[1]
    first, second = new_session(app), new_session(app)
    with pytest.raises(AppError, match="No adapter for this session"):
        second.predict(QUESTION, [], api_name="/chat")
    first.predict("Alpha text: the gate code is 4417.", api_name="/generate")
    second.predict("Beta text: the gate code is 9902.", api_name="/generate")
    assert first.predict(api_name="/session")["adapter"]["context_sha256"] == context_sha256(
        "Alpha text: the gate code is 4417.")
    assert second.predict(api_name="/session")["adapter"]["context_sha256"] == context_sha256(
        "Beta text: the gate code is 9902.")

    old = adapter_of(engine, "Alpha text: the gate code is 4417.").name
    first.predict("Gamma text: the gate code is 1234.", api_name="/generate")
    peft_model = engine.hypernetwork().model.peft_model
    assert old not in engine.adapters and old not in peft_model.peft_config  # the previous adapter is deleted
    beta = adapter_of(engine, "Beta text: the gate code is 9902.")
    assert beta.name in peft_model.peft_config  # the other session's adapter is untouched

    _, history = second.predict("What is the gate code?", [], api_name="/chat")
    tokenizer = engine.hypernetwork().model.tokenizer
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What is the gate code?"}], tokenize=False,
                                           add_generation_prompt=True)
    expected = generate_answers(peft_model, tokenizer, [prompt], [beta.name], engine.max_new_tokens)[0]
    assert history[-1]["content"][0]["text"] == expected


def test_the_page_says_which_hypernetwork_runs_where_it_came_from_and_what_to_expect(app):
    from peft_shine.demo.app import HELD_OUT_TABLE, hypernetwork_view
    from peft_shine.demo.engine import Session

    banner, line = hypernetwork_view(app[1], Session())
    assert f"**{SHIPPED_NAME}** (SHINE checkpoint), from the copy packaged with peft-shine" in line
    assert HELD_OUT_TABLE in line and banner["visible"] is False
    heading = HELD_OUT_TABLE.rsplit("#", 1)[1].replace("-", " ")
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    assert f"\n## {heading[0].upper()}{heading[1:]}\n" in readme  # the link lands on the held-out table


def test_a_missing_hub_repo_falls_back_to_the_packaged_copy_and_says_why(hub_env):
    from peft_shine.shipped import load_hypernetwork

    loaded = load_hypernetwork(hub_repo="tester/no-such-hypernetwork")
    assert loaded.trained and loaded.hub_id is None
    assert loaded.origin.startswith("the copy packaged with peft-shine, because the Hub repo "
                                    "tester/no-such-hypernetwork could not be loaded (")


def test_closed_sessions_free_their_adapters(app):
    from peft_shine.demo.engine import Session

    engine = app[1]
    first, kept = engine.generate(Session(), "Delta text: the gate code is 5555.")
    peft_config = engine.hypernetwork().model.peft_model.peft_config
    second, last = engine.generate(Session(), "Epsilon text: the gate code is 6666.")
    engine.release_session(first)  # what the gr.State delete callback does when a browser session ends
    assert kept.name not in engine.adapters and kept.name not in peft_config and not kept.zip_path.exists()
    engine.release_session(second)  # peft cannot delete its last adapter: it goes once another one exists
    assert last.name not in engine.adapters and not last.zip_path.exists()
    third, _ = engine.generate(Session(), "Zeta text: the gate code is 7777.")
    assert last.name not in peft_config
    engine.release_session(third)


def test_empty_contexts_give_clear_errors(app):
    client = new_session(app)
    with pytest.raises(AppError, match="empty or whitespace only") as empty:
        client.predict("  \n ", api_name="/generate")
    assert "/tmp" not in str(empty.value) and "Traceback" not in str(empty.value)
    with pytest.raises(AppError, match="Enter a Hub repo id"):
        client.predict("not a repo id", api_name="/load_hypernetwork")


def test_a_long_text_is_read_in_chunks_and_the_status_shows_them(app):
    long_text = "\n\n".join(f"Paragraph {i}: the archive in room {i} holds {i * 7} maps of the coast." for i in range(90))
    status, zip_path, _ = new_session(app).predict(long_text, api_name="/generate")
    adapter = adapter_of(app[1], long_text)
    window = app[1].hypernetwork().model.config.max_context_length
    assert adapter.context_tokens > window and len(adapter.chunk_tokens) >= 2 and max(adapter.chunk_tokens) <= window
    assert f"{len(adapter.chunk_tokens)} chunks of {', '.join(map(str, adapter.chunk_tokens))} tokens" in status
    assert Path(zip_path).name == "shine-adapter.zip"


def test_upload_reads_a_markdown_context(app, tmp_path):
    path = tmp_path / "notes.md"
    path.write_text("# Notes\nThe launch is on Tuesday.\n", encoding="utf-8")
    assert new_session(app).predict(handle_file(str(path)), api_name="/upload_context") == path.read_text()


def test_push_lands_the_adapter_files_on_the_hub(app, hub_env):
    client = new_session(app)
    _, zip_path, _ = client.predict(CONTEXT, api_name="/generate")
    result = client.predict("tester/zorbia-adapter", True, "", api_name="/push")  # HF_TOKEN from the environment
    assert result.startswith("✓ Pushed to [tester/zorbia-adapter]")
    with zipfile.ZipFile(zip_path) as archive:
        for name in ("adapter_config.json", "adapter_model.safetensors"):
            assert hub_env.file_bytes("tester/zorbia-adapter", name) == archive.read(f"shine-adapter/{name}")
    assert hub_env.get_repo("tester/zorbia-adapter").private

    secret = "hf_not_a_valid_token_123456"
    with pytest.raises(AppError) as error:
        client.predict("tester/other-adapter", True, secret, api_name="/push")
    assert secret not in str(error.value) and "Push failed" in str(error.value)


def test_load_a_hypernetwork_from_the_hub(app, hub_env, tmp_path):
    from huggingface_hub import HfApi

    engine = app[1]
    engine.hypernetwork().model.save_pretrained(tmp_path / "hypernetwork")
    HfApi().create_repo("tester/shine-test", exist_ok=True)
    HfApi().upload_folder(repo_id="tester/shine-test", folder_path=tmp_path / "hypernetwork")
    client = new_session(app)
    banner, line, status, _, chat = client.predict("tester/shine-test", api_name="/load_hypernetwork")
    assert banner["visible"] is False and "**tester/shine-test** (SHINE checkpoint)" in line
    assert status == "No adapter yet." and chat == []
    assert client.predict(CONTEXT, api_name="/generate")[0].startswith("✓")
    assert client.predict(api_name="/session")["hypernetwork"] == "tester/shine-test"
    client.predict("tester/adapter-with-card", False, "", api_name="/push")  # cites the hypernetwork repo in a card
    card = hub_env.file_bytes("tester/adapter-with-card", "README.md").decode()
    assert "tester/shine-test" in card and context_sha256(CONTEXT) in card


def test_tokens_and_paths_are_scrubbed_and_a_space_never_uses_its_own_token(monkeypatch):
    message = "failed to read /tmp/shine-demo-x1/abc/adapter_model.safetensors with token hf_secret at " \
              "http://127.0.0.1:8000/api/models/tester/repo (org/name)"
    cleaned = scrub(message, ["hf_secret"])
    assert "/tmp" not in cleaned and "hf_secret" not in cleaned and "<path>" in cleaned
    assert "http://127.0.0.1:8000/api/models/tester/repo" in cleaned and "org/name" in cleaned
    monkeypatch.setenv("HF_TOKEN", "hf_owner_secret")
    assert resolve_token("", None, space=True) is None
    assert resolve_token("", None, space=False) == "hf_owner_secret"
    assert resolve_token(" hf_typed ", None, space=True) == "hf_typed"


def test_shine_demo_command_line():
    args = build_parser().parse_args(["demo", "--port", "8123", "--hypernetwork", "org/name"])
    assert (args.port, args.share, args.hypernetwork, args.host) == (8123, False, "org/name", "127.0.0.1")
    assert build_parser().parse_args(["demo", "--share"]).share is True
    assert build_parser().parse_args(["demo", "--share", "--no-share"]).share is False
    assert callable(args.func)


@pytest.mark.integration
def test_browser_generates_an_adapter_and_chats(app):
    if not CHROMIUM.exists():
        pytest.fail("Headless Chromium is missing at /usr/bin/chromium: install it with "
                    "`apt-get update && apt-get install -y chromium` (`make test` does this when apt-get exists).")
    from playwright.sync_api import expect, sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1360, "height": 900})
            page.goto(app[0], wait_until="domcontentloaded")
            # the default is the shipped, trained hypernetwork: its name, and no "untrained" warning
            expect(page.locator("#hypernetwork-line")).to_contain_text(SHIPPED_NAME, timeout=60_000)
            expect(page.locator("#untrained-banner")).to_be_hidden()
            page.locator("#context textarea").fill(CONTEXT)
            page.locator("#generate").click()
            expect(page.locator("#adapter-status")).to_contain_text("Adapter ready", timeout=90_000)
            page.locator("#message textarea").fill(QUESTION)
            page.locator("#send").click()
            bot = page.locator("#chatbot .bot-row, #chatbot [data-testid='bot']").last
            expect(bot).to_contain_text(re.compile(r"\S"), timeout=90_000)
            assert bot.inner_text().strip()
            page.screenshot(path=str(ARTIFACTS / "demo.png"), full_page=True)
            page.get_by_role("tab", name="Compare").click()
            page.locator("#question textarea").fill(QUESTION)
            page.locator("#compare").click()
            for key in ("adapter", "base", "in-context"):
                expect(page.locator(f"#answer-{key} textarea")).to_have_value(re.compile(r"\S"), timeout=90_000)
            page.screenshot(path=str(ARTIFACTS / "demo-compare.png"), full_page=True)
        finally:
            browser.close()
    assert all((ARTIFACTS / name).stat().st_size > 10_000 for name in ("demo.png", "demo-compare.png"))


def test_pasted_text_is_bounded_like_uploads_before_any_model_work():
    from peft_shine.demo.engine import MAX_UPLOAD_BYTES, Session
    from peft_shine.errors import DemoError

    engine = DemoEngine()
    try:
        with pytest.raises(DemoError, match="larger than 1 MB"):
            engine.generate(Session(), "The archive holds maps. " * (MAX_UPLOAD_BYTES // 20))
        assert engine.hypernetworks == {}  # refused before the hypernetwork was even loaded
    finally:
        engine.close()


def test_a_text_over_the_demo_token_limit_is_refused_naming_it(app):
    from peft_shine.demo.engine import MAX_CONTEXT_TOKENS, Session

    text = "Room 7 holds maps of the coast. " * (MAX_CONTEXT_TOKENS // 6)
    with pytest.raises(Exception, match=f"at most {MAX_CONTEXT_TOKENS:,} tokens"):
        app[1].generate(Session(), text)
    status = new_session(app)
    with pytest.raises(AppError, match=f"at most {MAX_CONTEXT_TOKENS:,} tokens"):
        status.predict(text, api_name="/generate")
