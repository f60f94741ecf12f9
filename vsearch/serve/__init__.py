"""``vsearch serve``: the HTTP search-by-photo service over the published index.

One concept per module: ``command`` (settings, CLI), ``app`` (routes), ``uploads`` (request
bodies and their errors), ``filters`` (what a filter means), ``attributes`` (the listings'
attributes a filter is checked against), ``filtered`` (filtered vector search), ``calibration``
(the "no good match" threshold), ``holder`` (the index in service and its hot swap),
``metrics`` (Prometheus), ``health`` (the operators' HTML page).
"""
