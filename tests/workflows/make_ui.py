"""Regenerate the UI templates in workflows/ from the API twins here, through a real host's /object_info.

Run after editing a tests/workflows/*.api.json (with the host's Python):  python tests/workflows/make_ui.py
The host test ``test_ui_templates_convert_to_their_api_twins`` fails until the two agree again.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO / "tests"), str(REPO / "tools")]

import _host  # noqa: E402
from comfy_workflow import api_to_ui  # noqa: E402


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        fixdir = Path(tmp) / "fix"
        _host.prepare_fixtures(fixdir)
        host = _host.start_host(Path(tmp), fixdir, _host.comfy_path())
        try:
            info = host.object_info()
        finally:
            host.stop()
    for name in _host.api_workflow_names():
        api = _host.with_template_values(_host.load_api_workflow(name), name)
        ui = api_to_ui(api, info)
        out = _host.UI_WORKFLOWS / f"{name}.json"
        out.write_text(json.dumps(ui, indent=1) + "\n")
        print(f"wrote {out.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
