"""Git's clean filter for the notebooks: the metadata JupyterLab rewrites on open, as committed.

JupyterLab writes the running kernel's exact ``language_info`` (with the Python version,
e.g. "3.12.3") into a notebook when it opens it, and autosaves. The notebooks are committed
with the course's reference environment (``REFERENCE_PYTHON``); on another Python every
notebook a learner merely opened would show as modified and block ``git pull``. This
filter, which `make setup` registers for ``notebooks/*.ipynb`` (see .gitattributes), shows
git the committed values instead. Nothing else is changed: the learner's edits and outputs
are still seen. Standard library only: git runs it with any ``python3``.
"""

import json
import sys

REFERENCE_PYTHON = "3.11.7"  # the Python the notebooks' metadata names (tests check it)
KERNELSPEC = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}


def clean(text: str) -> str:
    try:
        notebook = json.loads(text)
    except ValueError:
        return text  # not JSON (a merge in progress): leave it to git
    metadata = notebook.get("metadata", {})
    if metadata.get("kernelspec", {}).get("name") == KERNELSPEC["name"]:
        metadata["kernelspec"] = dict(KERNELSPEC)
    if metadata.get("language_info", {}).get("name") == "python":
        metadata["language_info"]["version"] = REFERENCE_PYTHON
    return json.dumps(notebook, indent=1, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    sys.stdout.write(clean(sys.stdin.read()))
