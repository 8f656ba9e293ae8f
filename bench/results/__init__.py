"""Turning run folders into results: collection, tables, costs, plots, the HTML report, status and the exported
network."""
