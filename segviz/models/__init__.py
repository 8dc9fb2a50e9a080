"""One file per architecture; importing this package registers every variant."""
from segviz.models import segformer  # noqa: F401
from segviz.models import edaformer  # noqa: F401
from segviz.models import swin  # noqa: F401
from segviz.models import upernet  # noqa: F401
from segviz.models import deeplabv3plus  # noqa: F401
from segviz.models import mask2former  # noqa: F401
from segviz.models import dat  # noqa: F401
from segviz.models import mask2former_video  # noqa: F401
