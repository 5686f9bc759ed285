"""Reading stored results: metrics (pure functions over arrays), outcomes (database ->
arrays), the dashboard's data, review queues, and the HTML report."""
