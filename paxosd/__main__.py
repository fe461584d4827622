from paxosd.cli import main

main()
