"""paxosctl: the operator's and scripter's command line for paxosd."""
