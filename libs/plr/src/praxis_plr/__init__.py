"""Praxis' single adapter around PyLabRobot 0.2.2: an upgrade touches this package only.

Importing it imports PyLabRobot modules but flips no global switch; tip and volume tracking are
turned on by :meth:`LiveWorkcell.build` (or :func:`enable_tracking`).
"""

from praxis_plr.guard import WorkcellView, current_view
from praxis_plr.layout import demo_liquid_handler, demo_plate_reader, demo_workcell, drafts_for_tree
from praxis_plr.live import LiveWorkcell, enable_tracking
from praxis_plr.types import asset_kind, fqn, import_type, type_ancestry, unwrap_optional

__all__ = [
    "LiveWorkcell",
    "WorkcellView",
    "asset_kind",
    "current_view",
    "demo_liquid_handler",
    "demo_plate_reader",
    "demo_workcell",
    "drafts_for_tree",
    "enable_tracking",
    "fqn",
    "import_type",
    "type_ancestry",
    "unwrap_optional",
]
