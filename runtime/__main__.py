"""``python -m edgessm.runtime MODEL.onnx ...``: on-device inference and benchmark (see cli.py).

Also runs from a plain copy of this folder: ``python -m <copy> ...`` (a package, relative imports)
or ``python path/to/<copy> ...`` (a directory script, no package: imported by folder name below).
"""
import sys

if __package__:
    from .cli import main
else:  # run as a directory script: make the folder importable as a package under its own name
    import importlib
    import os

    _here = os.path.dirname(os.path.abspath(__file__))
    if sys.path and os.path.abspath(sys.path[0] or os.curdir) == _here:
        sys.path.pop(0)  # the folder itself on sys.path would let its modules shadow top-level names
    sys.path.insert(0, os.path.dirname(_here))
    main = importlib.import_module(os.path.basename(_here) + ".cli").main

if __name__ == "__main__":
    sys.exit(main())
