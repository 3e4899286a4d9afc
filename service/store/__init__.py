"""The model store on disk: version folders (:mod:`.repository`), each described by its
manifest (:mod:`.manifest`: the schema, one reader, one writer), and Triton's view of
the same folders (:mod:`.triton`)."""
