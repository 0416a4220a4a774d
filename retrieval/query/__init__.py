"""Search: :class:`~.search.Index`, ``open_index`` and ``search`` (:mod:`.search`), query
expressions parsed (:mod:`.parse`) and turned into vectors (:mod:`.expression`), filters
(:mod:`.filters`), tiered ranking for pages and date order (:mod:`.ranking`), matching the text
in photos (:mod:`.textmatch`), results (:mod:`.results`) and image -> text indexes (:mod:`.texts`).

Nothing is imported here: a text query must not import torch.
"""
