"""DVC stage `learner` (dvc.yaml runs this file); the stage itself is metaaug/stages/learner.py."""

from metaaug.stages import learner, run_command

if __name__ == "__main__":
    run_command(learner.command)
