"""Objects derived from a model's output that go back to where people look: DICOM a viewer
shows beside the source image (:mod:`storage.derived.dicom`)."""
