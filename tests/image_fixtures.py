"""Image folders the tests write (an ImageFolder dataset: root/{train,val}/class{0,1}/*.png)."""
from PIL import Image


def make_image_folder(root, n=4, size=40):
    """Two classes of plain-coloured images, n per class and split, heights size, size - 4, ..."""
    for split in ("train", "val"):
        for c, colour in enumerate([(220, 20, 20), (20, 20, 220)]):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (size, size - 4 * i), colour).save(folder / f"{i}.png")
    return root
