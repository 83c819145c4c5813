"""The one job runner under every Ray job: connect to a cluster (`connect`), plan the model
actors and tasks for it (`plan`), turn declared stages into Ray Data `map_batches` calls
(`stages`), drive the stream and commit whole shards (`drive`), and the run skeleton that
holds them together (`skeleton`: connect -> lease -> claim -> recover -> finished -> run ->
problems -> record). A job is its settings plus its list of stages."""
