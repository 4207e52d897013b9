"""Hugging Face Space entry point of the SHINE demo; the app itself is `peft_shine.demo.app` (installed package).

Locally: ``shine demo`` (or ``python demo/app.py``). Environment: ``SHINE_HYPERNETWORK`` picks the hypernetwork
(Hub repo id; default: the shipped checkpoint, else an untrained one), ``SHINE_MAX_NEW_TOKENS`` the answer length.
"""

import os

from peft_shine.demo.app import build_demo, launch_options


demo = build_demo(hypernetwork=os.environ.get("SHINE_HYPERNETWORK") or None,
                  max_new_tokens=int(os.environ.get("SHINE_MAX_NEW_TOKENS", "64")))

if __name__ == "__main__":
    demo.launch(**launch_options())
