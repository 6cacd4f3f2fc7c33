"""DVC stage `train_learned` (dvc.yaml runs this file); the stage itself is metaaug/stages/train_learned.py."""

from metaaug.stages import train_learned, run_command

if __name__ == "__main__":
    run_command(train_learned.command)
