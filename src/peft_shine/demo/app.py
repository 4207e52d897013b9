"""The SHINE Gradio demo: paste a context, get a LoRA adapter, chat with it, compare answers, download or push it.

A thin UI over `peft_shine.demo.engine.DemoEngine` (which holds the models). ``shine demo`` runs it locally and
``demo/app.py`` is the Hugging Face Space entry point. Every event has an ``api_name``, so it is scriptable with
``gradio_client.Client(url).predict(..., api_name="/generate")``. Model work goes through one queue slot
(``concurrency_id="model"``); each browser session keeps its own adapter in a ``gr.State``.
"""

import functools
import logging
from collections.abc import Callable
from typing import Any

import gradio as gr

from peft_shine.adapters.contexts import ContextError
from peft_shine.demo.engine import MAX_UPLOAD_BYTES, DemoEngine, DemoError, Session, read_context_file, scrub
from peft_shine.demo.hub import on_space, resolve_token
from peft_shine.qa_data import load_qa_records, load_sample_context


logger = logging.getLogger(__name__)

HELD_OUT_TABLE = "https://github.com/peft-shine/peft-shine#the-shipped-default-hypernetwork"  # README's table
CSS = """
#untrained-banner { border: 1px solid #f0b429; background: #fff8e1; color: #5f4100; border-radius: 8px;
                    padding: 10px 14px; }
#untrained-banner p { margin: 0; color: #5f4100; }
#adapter-status { min-height: 2.5em; }
.column-title h3 { margin-bottom: 0; }
footer { display: none !important; }
"""
INTRO = """# SHINE · turn a context into a LoRA adapter
A hypernetwork reads your text once and writes a LoRA adapter for the frozen base model in **one forward pass**.
The adapted model then answers questions about the text **without the text in its prompt**."""
UNTRAINED_BANNER = """⚠️ **Untrained hypernetwork.** The shipped checkpoint was not found (or another was asked for), so this
demo uses a randomly initialised hypernetwork: every step is real (one forward pass → a standard peft LoRA adapter), but the adapter has
not learned to store the context, so its answers are not informed by it. Load a trained hypernetwork under
**Hypernetwork** below."""
QUALITY_NOTE = ("What to expect: the shipped hypernetwork was trained on a CPU budget; its adapters carry part of "
                "their context and often miss, well below the context in the prompt "
                f"([held-out results]({HELD_OUT_TABLE}) with the wrong-context control).")
MODEL_EVENT = {"concurrency_id": "model", "concurrency_limit": 1}


def user_errors(fn: Callable) -> Callable:
    """Turn expected failures into a `gr.Error` with a clear message, scrubbed of server paths (and the token)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except (ContextError, DemoError) as error:
            raise gr.Error(scrub(str(error)), print_exception=False) from None
        except (ValueError, KeyError, OSError, RuntimeError) as error:
            logger.warning("demo request failed", exc_info=True)
            raise gr.Error(scrub(f"{type(error).__name__}: {error}"), print_exception=False) from None
        except Exception:
            logger.exception("unexpected demo error")
            raise gr.Error("Unexpected server error; the details are in the server log.", print_exception=False) \
                from None

    return wrapper


def hypernetwork_view(engine: DemoEngine, session: Session) -> tuple[dict, str]:
    """The banner update and the description of the session's hypernetwork: what it is, where it came from (the
    Hub repo, or the packaged copy and why), and for the default one what quality to expect."""
    info = engine.describe(session)
    kind = " (SHINE checkpoint)" if info["trained"] else ""
    origin = f", from {scrub(info['origin'])}" if info["origin"] else ""
    line = (f"Hypernetwork: **{info['hypernetwork']}**{kind}{origin} · base model `{info['base_model']}` · reads "
            f"{info['max_context_tokens']} tokens at once (longer texts in chunks)")
    if info["trained"] and info["default"]:
        line += "\n\n" + QUALITY_NOTE
    return gr.update(visible=not info["trained"]), line


def adapter_status(info: dict) -> str:
    """The Markdown shown after generation: time, size, context length and hash."""
    adapter = info["adapter"]
    chunks = adapter.get("chunk_tokens") or []
    passes = "one forward pass" if not chunks else \
        f"{len(chunks)} chunks of {', '.join(map(str, chunks))} tokens, combined into one LoRA"
    return (f"✓ **Adapter ready**: generated in **{adapter['generation_seconds']:.2f} s** ({passes}) from "
            f"{adapter['context_tokens']} context tokens · **{adapter['size_bytes'] / 1e6:.1f} MB** · context "
            f"sha256 `{adapter['context_sha256'][:12]}…`")


class Handlers:
    """Event handlers bound to one engine (each returns what its Gradio outputs expect)."""

    def __init__(self, engine: DemoEngine) -> None:
        self.engine = engine

    @user_errors
    def page_load(self, session: Session) -> tuple[dict, str]:
        return hypernetwork_view(self.engine, session)

    @user_errors
    def upload(self, file: str) -> str:
        return read_context_file(file)

    @user_errors
    def generate(self, context: str, session: Session,
                 progress: gr.Progress = gr.Progress(track_tqdm=True)) -> tuple[Session, str, str, list]:  # noqa: B008
        progress(0.05, desc="Loading the hypernetwork…")
        self.engine.hypernetwork(session.hypernetwork)
        progress(0.3, desc="Generating the adapter (one forward pass)…")
        session, adapter = self.engine.generate(session, context)
        status = adapter_status(self.engine.describe(session))
        return session, status, str(adapter.zip_path), []

    @user_errors
    def chat(self, message: str, history: list, session: Session) -> tuple[str, list]:
        answer = self.engine.chat(session, history or [], message)
        turn = [{"role": "user", "content": message.strip()}, {"role": "assistant", "content": answer}]
        return "", [*(history or []), *turn]

    @user_errors
    def compare(self, question: str, session: Session) -> tuple[str, str, str]:
        return self.engine.compare(session, question)

    @user_errors
    def load(self, source: str, session: Session) -> tuple[Session, dict, str, str, dict, list]:
        session, _ = self.engine.load_hypernetwork(session, source)
        banner, line = hypernetwork_view(self.engine, session)
        return session, banner, line, "No adapter yet.", gr.update(value=None, interactive=False), []

    @user_errors
    def push(self, repo_id: str, private: bool, token: str, session: Session,
             oauth_token: gr.OAuthToken | None = None) -> str:
        resolved = resolve_token(token, oauth_token)
        try:
            url = self.engine.push(session, repo_id, resolved, private=private)
        except DemoError:
            raise
        except Exception as error:  # the token must never reach the page, whatever failed
            raise DemoError(scrub(f"Push failed: {type(error).__name__}: {error}", [resolved, token])) from None
        return f"✓ Pushed to [{repo_id.strip()}]({url})."

    @user_errors
    def session_info(self, session: Session) -> dict:
        return self.engine.describe(session)


def example_rows() -> tuple[list[list[str]], list[str]]:
    """Examples ``[context, question, question]``: the bundled sample context and two SQuAD paragraphs."""
    sample = load_sample_context()[0]
    rows, labels, titles = [[sample.context, sample.question, sample.question]], [f"Sample: {sample.title}"], set()
    titles.add(sample.title)
    for record in load_qa_records("squad", limit=20):
        if record.title not in titles and len(rows) < 3:
            titles.add(record.title)
            rows.append([record.context, record.question, record.question])
            labels.append(f"SQuAD: {record.title.replace('_', ' ')}")
    return rows, labels


def build_demo(engine: DemoEngine | None = None, hypernetwork: str | None = None,
               max_new_tokens: int = 64, allow_local_paths: bool = False, hub_repo: str | None = None) -> gr.Blocks:
    """The demo `gr.Blocks` (queued, not launched). Models load lazily, on the first page load or request.

    Visitors may load server folders only with ``allow_local_paths=True`` (the operator's explicit choice): answers
    to a path would tell them which server paths exist.
    """
    if engine is None:
        engine = DemoEngine(hypernetwork, max_new_tokens=max_new_tokens, allow_local_paths=allow_local_paths,
                            hub_repo=hub_repo)
    handlers = Handlers(engine)
    with gr.Blocks(title="SHINE: context → LoRA adapter", delete_cache=(1800, 3600)) as demo:
        state = gr.State(Session(), delete_callback=engine.release_session)
        gr.Markdown(INTRO)
        banner = gr.Markdown(UNTRAINED_BANNER, elem_id="untrained-banner", visible=False)
        hypernetwork_line = gr.Markdown("Hypernetwork: loading…", elem_id="hypernetwork-line")
        ui = build_main_row()
        ui.update(build_settings_row(engine))
        wire_events(demo, handlers, state, banner, hypernetwork_line, ui)
    demo.engine = engine  # for the CLI and tests
    return demo.queue(default_concurrency_limit=1, max_size=64)


def build_main_row() -> dict[str, Any]:
    """The context column (input, upload, generate, download, examples) and the chat / compare column."""
    with gr.Row(equal_height=False):
        with gr.Column(scale=5, elem_id="context-column"):
            gr.Markdown("### 1 · Context", elem_classes="column-title")
            context = gr.Textbox(label="Context", lines=12, max_lines=20, elem_id="context",
                                 max_length=MAX_UPLOAD_BYTES,  # bounded like uploads (checked again by the engine)
                                 placeholder="Paste a text here (a paragraph, notes, a README…) or upload a file.")
            with gr.Row():
                upload = gr.UploadButton("Upload .txt / .md", file_types=[".txt", ".md"], size="md")
                generate = gr.Button("Generate adapter", variant="primary", elem_id="generate")
            status = gr.Markdown("No adapter yet.", elem_id="adapter-status")
            download = gr.DownloadButton("⬇ Download adapter (.zip, standard peft folder)", interactive=False,
                                         size="md", elem_id="download")
        with gr.Column(scale=6, elem_id="ask-column"):
            gr.Markdown("### 2 · Ask", elem_classes="column-title")
            with gr.Tabs():
                with gr.Tab("Chat with the adapter", id="chat"):
                    chatbot = gr.Chatbot(label="Adapter chat (the context is not in the prompt)", height=340,
                                         elem_id="chatbot", buttons=["copy"])
                    with gr.Row():
                        message = gr.Textbox(show_label=False, placeholder="Ask about the context…", scale=5,
                                             elem_id="message", submit_btn=False)
                        send = gr.Button("Send", variant="primary", scale=1, min_width=80, elem_id="send")
                    clear = gr.Button("Clear chat", size="sm", variant="secondary")
                with gr.Tab("Compare", id="compare"):
                    question = gr.Textbox(label="Question", elem_id="question",
                                          placeholder="The same question, answered three ways in one batch")
                    compare = gr.Button("Answer three ways", variant="primary", elem_id="compare")
                    with gr.Row():
                        answers = [gr.Textbox(label=label, lines=5, elem_id=f"answer-{key}") for key, label in (
                            ("adapter", "Adapter · context not in prompt"),
                            ("base", "Base model · question only"),
                            ("in-context", "Base model · context in prompt"))]
    with gr.Column(elem_id="examples-column"):
        rows, labels = example_rows()
        gr.Examples(rows, inputs=[context, message, question], example_labels=labels,
                    label="Ready-made examples (fill the context and the questions)")
    return {"context": context, "upload": upload, "generate": generate, "status": status, "download": download,
            "chatbot": chatbot, "message": message, "send": send, "clear": clear, "question": question,
            "compare": compare, "answers": answers}


def build_settings_row(engine: DemoEngine) -> dict[str, Any]:
    """The hypernetwork loader, the Hub push form and the session details."""
    with gr.Row(equal_height=False):
        with gr.Accordion("Hypernetwork", open=False):
            where = "Hub repo id or local folder" if engine.allow_local_paths else "Hub repo id"
            source = gr.Textbox(label=f"Another SHINE hypernetwork ({where})", placeholder="org/shine-hypernetwork",
                                elem_id="hypernetwork-source")
            load = gr.Button("Load hypernetwork", elem_id="load-hypernetwork")
        with gr.Accordion("Push the adapter to the Hub", open=False):
            if on_space():
                gr.LoginButton()
            repo = gr.Textbox(label="Target repo", placeholder="your-name/my-shine-adapter", elem_id="push-repo")
            private = gr.Checkbox(True, label="Private repo")
            token = gr.Textbox(label="Access token with write permission (optional when signed in or HF_TOKEN is set)",
                               type="password", placeholder="hf_…", elem_id="push-token")
            push = gr.Button("Push to the Hub", elem_id="push")
            push_result = gr.Markdown(elem_id="push-result")
        with gr.Accordion("Session details", open=False):
            details = gr.JSON(label="This session's hypernetwork and adapter")
            refresh = gr.Button("Refresh", size="sm")
    return {"source": source, "load": load, "repo": repo, "private": private, "token": token, "push": push,
            "push_result": push_result, "details": details, "refresh": refresh}


def wire_events(demo: gr.Blocks, handlers: Handlers, state: gr.State, banner: gr.Markdown,
                hypernetwork_line: gr.Markdown, ui: dict[str, Any]) -> None:
    """Connect every event; model work shares the ``"model"`` concurrency group (one at a time)."""
    demo.load(handlers.page_load, [state], [banner, hypernetwork_line], api_name="page_load", **MODEL_EVENT)
    ui["upload"].upload(handlers.upload, [ui["upload"]], [ui["context"]], api_name="upload_context")
    generated = ui["generate"].click(handlers.generate, [ui["context"], state], [state, ui["status"],
                                     ui["download"], ui["chatbot"]], api_name="generate", **MODEL_EVENT)
    generated.success(lambda: gr.update(interactive=True), None, [ui["download"]], api_visibility="private")
    chat_io = {"fn": handlers.chat, "inputs": [ui["message"], ui["chatbot"], state],
               "outputs": [ui["message"], ui["chatbot"]], **MODEL_EVENT}
    ui["send"].click(api_name="chat", **chat_io)
    ui["message"].submit(api_visibility="private", **chat_io)
    ui["clear"].click(lambda: [], None, [ui["chatbot"]], api_visibility="private")
    compare_io = {"fn": handlers.compare, "inputs": [ui["question"], state], "outputs": ui["answers"], **MODEL_EVENT}
    ui["compare"].click(api_name="compare", **compare_io)
    ui["question"].submit(api_visibility="private", **compare_io)
    ui["load"].click(handlers.load, [ui["source"], state], [state, banner, hypernetwork_line, ui["status"],
                     ui["download"], ui["chatbot"]], api_name="load_hypernetwork", **MODEL_EVENT)
    ui["push"].click(handlers.push, [ui["repo"], ui["private"], ui["token"], state], [ui["push_result"]],
                     api_name="push", concurrency_limit=2)
    ui["refresh"].click(handlers.session_info, [state], [ui["details"]], api_name="session")


def launch_options(**overrides: Any) -> dict[str, Any]:
    """Keyword arguments for ``demo.launch`` (Gradio 6 takes the theme and CSS there)."""
    theme = gr.themes.Soft(primary_hue="indigo", font=("ui-sans-serif", "system-ui", "sans-serif"),
                           font_mono=("ui-monospace", "monospace"))  # system fonts: no font download, works offline
    return {"theme": theme, "css": CSS, **overrides}
