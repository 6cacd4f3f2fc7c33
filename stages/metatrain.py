"""DVC stage `metatrain` (dvc.yaml runs this file); the stage itself is metaaug/stages/metatrain.py."""

from metaaug.stages import metatrain, run_command

if __name__ == "__main__":
    run_command(metatrain.command)
