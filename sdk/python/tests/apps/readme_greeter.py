"""Runs the Greeter example of sdk/python/README.md exactly as written (the code block that defines
`say_hello_stream`), so the documentation cannot drift from the API."""

import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # greeter_pb2

readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
blocks = re.findall(r"```python\n(.*?)```", readme, re.S)
(code,) = [b for b in blocks if "def say_hello_stream" in b]
exec(compile(code, "README.md", "exec"), {"__name__": "__main__"})
