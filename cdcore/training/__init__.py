"""Training (distillation) code: what makes compressed student models, not what stylizes with them.

`losses` holds the collaborative-distillation losses (Wang et al., CVPR 2020), `pruning` the L1
filter pruning that gives a student its starting weights, `trainset` the deterministic stream of
training crops that workers share out, `vgg` the torchvision VGG-19 teacher, and `figures` the
loss curves and sample grids of a training run. The Ray Train job that drives them is
`jobs.distill`.
"""
