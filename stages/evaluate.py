"""DVC stage `evaluate` (dvc.yaml runs this file); the stage itself is metaaug/stages/evaluate.py."""

from metaaug.stages import evaluate, run_command

if __name__ == "__main__":
    run_command(evaluate.command)
