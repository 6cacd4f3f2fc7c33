"""DVC stage `prepare` (dvc.yaml runs this file); the stage itself is metaaug/stages/prepare.py."""

from metaaug.stages import prepare, run_command

if __name__ == "__main__":
    run_command(prepare.command)
