"""An index on disk: the names of its files and the live generation (:mod:`.layout`), the
manifest and metadata schema (:mod:`.manifest`), writing generations under the writer lock
(:mod:`.store`), xxHash checksums of every file (:mod:`.checksums`), reading a generation
(:mod:`.reader`) and the FAISS ANN index (:mod:`.ann`).

Nothing is imported here: each module is loaded when it is used.
"""
