"""etcd's v3 gRPC API over paxosd: a second front end on the same log and state machine.

``paxosd etcd-gateway`` (started by ``paxosd run`` when the node's config has ``[etcd]
listen``) serves etcd's KV, Watch, Maintenance, Cluster and Lease services and the Lock and
Election services (v3lockpb, v3electionpb), and maps each request onto paxosd's client
protocol (``paxosd.client``) and its lock/election recipes: there is no second data model. Needs the
``etcd`` extra (grpcio, protobuf); the generated modules in ``paxosd.etcd.proto`` are checked
in (see ``proto/generate.sh``).
"""
