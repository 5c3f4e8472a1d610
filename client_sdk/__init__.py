"""Client SDK (issue 4, DESIGN 6): so far its encrypted local store
(:mod:`client_sdk.store`), its relay transport (:mod:`client_sdk.transport`) and its
error tree (:mod:`client_sdk.errors`)."""
