"""The web demo page: `python app.py [--model MODEL] [--host HOST] [--port PORT]`.

Needs the `demo` extra (`pip install -e '.[demo]'`, Gradio). Serves the model `make demo` writes
(`demo_output/model`) unless `--model` names another folder or Hub id, on http://127.0.0.1:7860. The page's
logic is `ita_segmentation.apps.web`.
"""

import sys

from ita_segmentation.apps.web import main

if __name__ == "__main__":
    sys.exit(main())
