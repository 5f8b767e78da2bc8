"""Sequential encoders (SASRec, BERT4Rec, GRU4Rec) and the K peers that HAIL trains."""

from hail_ext.models.bert4rec import BERT4Rec
from hail_ext.models.gru4rec import GRU4Rec
from hail_ext.models.peers import ENCODERS, Peers
from hail_ext.models.sasrec import SASRec

__all__ = ["BERT4Rec", "ENCODERS", "GRU4Rec", "Peers", "SASRec"]
