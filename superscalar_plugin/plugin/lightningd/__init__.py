"""Node glue: lightningd's RPC and database, the datastore, options, peers, the HTLC hooks."""
