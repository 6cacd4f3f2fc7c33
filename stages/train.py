"""DVC stage `train` (dvc.yaml runs this file); the stage itself is metaaug/stages/train.py."""

from metaaug.stages import train, run_command

if __name__ == "__main__":
    run_command(train.command)
