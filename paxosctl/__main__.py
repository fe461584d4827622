from paxosctl.app import main

main()
