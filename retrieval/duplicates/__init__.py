"""Near-duplicate photos: groups found from the stored vectors and pixel fingerprints
(:mod:`.groups`), and the fingerprints themselves (:mod:`.fingerprint`, computed by the indexer).

Nothing is imported here: :mod:`.fingerprint` imports torch, and is loaded only when needed.
"""
