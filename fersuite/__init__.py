"""fersuite: train, evaluate and submit facial-expression models on the FER2013 CSV."""

EMOTIONS = ("Angry", "Disgust", "Fear", "Happy", "Sad", "Surprise", "Neutral")
IMAGE_SIZE = 48
INPUT_SHAPE = (IMAGE_SIZE, IMAGE_SIZE, 1)
NUM_CLASSES = len(EMOTIONS)
# Here rather than in models.py so that `train_cnn.py --help` shows it without importing Keras.
CNN_FILTERS = (64, 128, 192, 256, 512)

__version__ = "0.1.0"
