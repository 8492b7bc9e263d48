"""The servers of one database as a cluster: a primary that a failover may move
(``failover``)."""
