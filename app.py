"""The web demo page: `python app.py [--model MODEL] [--host HOST] [--port PORT]` (the `ita-web` command).

Needs the `demo` extra (`pip install -e '.[demo]'`, Gradio). Serves the model `make demo` writes
(`demo_output/model`) unless `--model` names another folder or Hub id, on http://127.0.0.1:7860. The arguments
are parsed and checked by `ita_segmentation.apps.web_cli.web` before torch is imported (a missing model folder, an
unknown device, a taken `--port`: one line, exit status 2); the page's logic is `ita_segmentation.apps.web`.
"""

import sys

from ita_cli import web

if __name__ == "__main__":
    sys.exit(web(prog="app.py"))
