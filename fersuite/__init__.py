"""fersuite: train, evaluate and submit facial-expression models on the FER2013 CSV."""

EMOTIONS = ("Angry", "Disgust", "Fear", "Happy", "Sad", "Surprise", "Neutral")
IMAGE_SIZE = 48
INPUT_SHAPE = (IMAGE_SIZE, IMAGE_SIZE, 1)
NUM_CLASSES = len(EMOTIONS)
# Here rather than in models.py so that `train_cnn.py --help` shows it without importing Keras.
CNN_FILTERS = (64, 128, 192, 256, 512)
# The default augmentation of train_cnn.py and train_mobilenet.py, in ImageDataGenerator's names and meanings.
AUGMENTATION = {
    "rotation_range": 10.0,
    "width_shift_range": 0.1,
    "height_shift_range": 0.1,
    "zoom_range": 0.1,
    "horizontal_flip": True,
}

__version__ = "0.1.0"
