from edgeds.cli import main

main()
