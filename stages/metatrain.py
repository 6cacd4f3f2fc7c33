"""DVC stage `metatrain`: a thin entry point; dvc.yaml names its inputs and outputs."""

import sys

from metaaug.cli import main

if __name__ == "__main__":
    main(["metatrain", *sys.argv[1:]])
