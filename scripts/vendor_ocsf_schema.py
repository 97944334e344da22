"""Vendor the compiled OCSF schema subset the tests validate Detection Findings against.

    .venv/bin/python scripts/vendor_ocsf_schema.py PATH/TO/ocsf-schema   # a v1.5.0 checkout

Compiles the repository with ocsf-lib (the OCSF project's own compiler, as the schema server
does), keeps the ``detection_finding`` class, the objects it reaches and the types, and writes
``tests/fixtures/ocsf/ocsf-<version>-detection_finding.json.gz``. The OCSF schema is
Apache-2.0 (https://github.com/ocsf/ocsf-schema); see tests/fixtures/ocsf/NOTICE.
"""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

from ocsf.compile.compiler import Compilation
from ocsf.compile.options import CompilationOptions
from ocsf.repository import read_repo
from ocsf.schema import to_dict

CLASS = "detection_finding"
OUT = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "ocsf"


def main(repo_path: str) -> None:
    options = CompilationOptions()
    options.ignore_extensions = ["windows", "linux"]
    schema = to_dict(Compilation(read_repo(repo_path, preserve_raw_data=False), options).build())
    cls = schema["classes"][CLASS]
    objects: dict[str, dict] = {}
    types = schema["types"]
    todo = [a["type"] for a in cls["attributes"].values() if a["type"] not in types]
    while todo:
        name = todo.pop()
        if name in objects:
            continue
        obj = schema["objects"][name]
        objects[name] = obj
        todo.extend(a["type"] for a in obj["attributes"].values() if a["type"] not in types)
    subset = {"version": schema["version"], "classes": {CLASS: cls}, "objects": objects,
              "types": types}
    path = OUT / f"ocsf-{schema['version']}-{CLASS}.json.gz"
    path.write_bytes(gzip.compress(json.dumps(subset, sort_keys=True).encode(), 9, mtime=0))
    print(f"wrote {path} ({len(objects)} objects)")


if __name__ == "__main__":
    main(sys.argv[1])
