"""The `parse_masks` stage: a validated label map for every image, from the data set or a face
parser.
"""
