"""Client SDK (issue 4, DESIGN 6), in progress: a first slice of the client
(:class:`client_sdk.client.Client`: register, send, receive), its encrypted local
store (:mod:`client_sdk.store`), its relay transport (:mod:`client_sdk.transport`) and
its error tree (:mod:`client_sdk.errors`). ``docs/sdk.md`` says what works so far."""
