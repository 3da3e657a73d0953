"""2D rotary layouts of the encoder.

'axial' (the paper's retrofitted 2D-RoPE): half of the rotary channel pairs rotate with the
patch's row index, the other half with its column index (`rope.rope2d_table`), so the score of
q(r,c) and k(r',c') depends only on (r-r', c-c').
'dinov3' (DINOv3's native RoPE): the same channel layout, rotated by the patch centre's position
in the image normalised to [-1, 1] (`rope.patch_centre_angles`) instead of its index: positions
are relative to the image size, not counted in patches.
"""
from __future__ import annotations

from vlm_spatial.models import rope
from vlm_spatial.models.positions.base import RopeLayout, register_rope2d


@register_rope2d
class Axial(RopeLayout):
    name = "axial"

    def table(self, rows, cols, spatial_shapes, head_dim, theta):
        return rope.rope2d_table(rows, cols, head_dim, theta)


@register_rope2d
class PatchCentres(RopeLayout):
    name = "dinov3"

    def table(self, rows, cols, spatial_shapes, head_dim, theta):
        return rope.rope2d_table(*rope.patch_centre_angles(rows, cols, spatial_shapes), head_dim, theta)
