"""DVC stage `evaluate`: a thin entry point; dvc.yaml names its inputs and outputs."""

import sys

from metaaug.cli import main

if __name__ == "__main__":
    main(["evaluate", *sys.argv[1:]])
