import torch
from torch import nn
from mtrl.supervised import MultiTaskTrainer

torch.manual_seed(0)
x = torch.randn(512, 10)
y_reg = x[:, :5].sum(1, keepdim=True)                   # task 0: regression
y_cls = (x[:, 5:].sum(1) > 0).long()                    # task 1: classification

trunk = nn.Sequential(nn.Linear(10, 64), nn.ReLU())      # shared by both tasks
heads = nn.ModuleList([nn.Linear(64, 1), nn.Linear(64, 2)])
model = nn.ModuleDict({"trunk": trunk, "heads": heads})

def task_losses(batch):                                  # -> [k] per-task losses
    xb, yr, yc = batch
    z = trunk(xb)
    return torch.stack([nn.functional.mse_loss(heads[0](z), yr),
                        nn.functional.cross_entropy(heads[1](z), yc)])

trainer = MultiTaskTrainer(model, task_losses, "excessmtl",
                           torch.optim.Adam(model.parameters(), lr=1e-3), shared=trunk)
for epoch in range(5):
    for i in range(0, 512, 64):
        weights, losses = trainer.step((x[i:i + 64], y_reg[i:i + 64], y_cls[i:i + 64]))
print("task weights", weights.tolist(), "losses", losses.tolist())
