"""Private parts of :class:`client_sdk.client.Client`: the layout of its records in the
store (:mod:`.records`)."""
