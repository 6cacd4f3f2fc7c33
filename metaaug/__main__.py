from metaaug.cli import main

main()
