"""DVC stage `augment` (dvc.yaml runs this file); the stage itself is metaaug/stages/augment.py."""

from metaaug.stages import augment, run_command

if __name__ == "__main__":
    run_command(augment.command)
