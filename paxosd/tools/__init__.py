"""``paxosd`` subcommands that work offline on one node's files: init, bootstrap, inspect, restore,
force-new-cluster."""
