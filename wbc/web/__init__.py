"""The web app (`python serve.py`): one hand-written page and a small JSON API over a loaded
CellPipeline. `app.create_app` builds the FastAPI app; `engine` runs the steps (decode, segment,
classify) off the event loop through `jobs.JobRunner`; `store.ResultStore` keeps results in memory,
bounded by count, age and size; the downloads come from `wbc.cell_outputs`, as predict.py's do.
Importing it starts nothing."""
