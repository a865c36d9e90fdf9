"""fersuite: train, evaluate and submit facial-expression models on the FER2013 CSV."""

EMOTIONS = ("Angry", "Disgust", "Fear", "Happy", "Sad", "Surprise", "Neutral")
IMAGE_SIZE = 48
INPUT_SHAPE = (IMAGE_SIZE, IMAGE_SIZE, 1)
NUM_CLASSES = len(EMOTIONS)

__version__ = "0.1.0"
