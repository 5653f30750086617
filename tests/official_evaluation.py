# ruff: noqa: SIM300, UP031, E501  (kept as written in the official code)
"""FE2E's official evaluation path, transcribed from AMAP-ML/FE2E (MIT, commit 262d4c9) for the tests.

Each function below is the official one with only what a single-process, directory-based run does
not need taken out (distributed gathering, tar archives, visualisation, prompts, timers). Sources:
``infer/inference.py`` (``input_process_image``), ``infer/inner_evaluation.py``
(``evaluate_single_prediction``, the normal loop of ``evaluation_normal_custom_parallel``),
``infer/util/alignment.py``, ``infer/util/metric.py``, ``infer/util/normal_utils.py``,
``infer/dataset/*.py`` (Marigold's depth loaders) and ``infer/dataset_normal/*/__init__.py``.
Marigold's differences (prs-eth/Marigold v1.0 ``marigold_pipeline.py`` / ``eval.py``) are at the end.

OpenCV is not installed here: ``cv2`` below is a shim with the same calls. Its ``resize`` is the
toolkit's numpy INTER_LINEAR (checked against OpenCV 4.8.1's own output in
test_evaluation_protocols.py); ``imread`` reads PNGs with Pillow (the same pixels) and EXR with
OpenEXR, and returns BGR, as OpenCV does.
"""

from __future__ import annotations

import os
import pickle

import numpy as np
import torch
import torch.nn.functional as Func
from PIL import Image

from fe2e_deploy.evaluation.resize import cv2_resize_linear


class cv2:  # noqa: N801  the OpenCV calls of the official loaders
    INTER_LINEAR = 1
    IMREAD_UNCHANGED = -1
    COLOR_BGR2RGB = 4

    @staticmethod
    def resize(x, size, interpolation):
        assert interpolation == cv2.INTER_LINEAR
        return cv2_resize_linear(x, size)

    @staticmethod
    def imread(path, flags):
        if path.endswith(".exr"):
            import OpenEXR  # noqa: PLC0415

            with OpenEXR.File(path) as f:
                return np.asarray(f.channels()["RGB"].pixels, dtype=np.float32)[..., ::-1]
        return np.asarray(Image.open(path))[..., ::-1]

    @staticmethod
    def cvtColor(x, code):  # noqa: N802
        return np.ascontiguousarray(x[..., ::-1])


# ---- infer/inference.py ----------------------------------------------------------------------------


def input_process_image(img):
    w, h = img.shape[-1], img.shape[-2]
    if w <= 1024 and h <= 768:
        w_new, h_new = 1024, 768
    elif w <= 1280 and h <= 960:
        w_new, h_new = 1216, 352
    elif w <= 6048 and h <= 4032:
        w_new, h_new = 864, 576
    else:
        w_new, h_new = w, h
    img_resized = Func.interpolate(img, (h_new, w_new), mode="bilinear", align_corners=False)
    img_resized = img_resized.clamp(0, 1)
    return img_resized, (w_new, h_new)


def generate_image(engine, ref_images):
    """``ImageGenerator.generate_image`` around the model: the engine's maps for ``ref_images * 2 - 1``.

    The official ``Lpred`` is the decoded [1, 3, h, w] clamped to [-1, 1], * 0.5 + 0.5; the engine returns
    its channel mean (which ``evaluate_single_prediction``'s ``mean(0)`` takes), ``Rpred`` the clamped map.
    """
    ref_images_raw, img_info = input_process_image(ref_images)
    height, width = ref_images_raw.shape[-2], ref_images_raw.shape[-1]
    Lpred, Rpred = engine.run(ref_images_raw * 2 - 1, (width, height))
    return None, Lpred.float(), Rpred.float()


# ---- infer/util/alignment.py -----------------------------------------------------------------------


def align_depth_least_square(gt_arr, pred_arr, valid_mask_arr, return_scale_shift=True, max_resolution=None):
    ori_shape = pred_arr.shape  # input shape
    gt = gt_arr.squeeze()  # [H, W]
    pred = pred_arr.squeeze()
    valid_mask = valid_mask_arr.squeeze()
    # Downsample
    if max_resolution is not None:
        scale_factor = np.min(max_resolution / np.array(ori_shape[-2:]))
        if scale_factor < 1:
            downscaler = torch.nn.Upsample(scale_factor=scale_factor, mode="nearest")
            gt = downscaler(torch.as_tensor(gt).unsqueeze(0)).numpy()
            pred = downscaler(torch.as_tensor(pred).unsqueeze(0)).numpy()
            valid_mask = downscaler(torch.as_tensor(valid_mask).unsqueeze(0).float()).bool().numpy()
    assert gt.shape == pred.shape == valid_mask.shape, f"{gt.shape}, {pred.shape}, {valid_mask.shape}"
    gt_masked = gt[valid_mask].reshape((-1, 1))
    pred_masked = pred[valid_mask].reshape((-1, 1))
    # numpy solver
    _ones = np.ones_like(pred_masked)
    A = np.concatenate([pred_masked, _ones], axis=-1)
    X = np.linalg.lstsq(A, gt_masked, rcond=None)[0]
    scale, shift = X
    aligned_pred = pred_arr * scale + shift
    # restore dimensions
    aligned_pred = aligned_pred.reshape(ori_shape)
    if return_scale_shift:
        return aligned_pred, scale, shift
    else:
        return aligned_pred


def depth2disparity(depth, return_mask=False):
    if isinstance(depth, torch.Tensor):
        disparity = torch.zeros_like(depth)
    elif isinstance(depth, np.ndarray):
        disparity = np.zeros_like(depth)
    non_negtive_mask = depth > 0
    disparity[non_negtive_mask] = 1.0 / depth[non_negtive_mask]
    if return_mask:
        return disparity, non_negtive_mask
    else:
        return disparity


def disparity2depth(disparity, **kwargs):
    return depth2disparity(disparity, **kwargs)


def depth2log_space(depth, **kwargs):
    if isinstance(depth, torch.Tensor):
        log_space = torch.zeros_like(depth)
    elif isinstance(depth, np.ndarray):
        log_space = np.zeros_like(depth)
    non_negtive_mask = depth > 0
    log_space[non_negtive_mask] = np.log(depth[non_negtive_mask])
    return log_space, non_negtive_mask


def log_space2depth(log_space, **kwargs):
    depth = np.exp(log_space)
    return depth


# ---- infer/util/metric.py --------------------------------------------------------------------------


def abs_relative_difference(output, target, valid_mask=None):
    abs_relative_diff = torch.abs(output - target) / target
    abs_relative_diff[~valid_mask] = 0
    n = valid_mask.sum((-1, -2))
    abs_relative_diff = torch.sum(abs_relative_diff, (-1, -2)) / n
    return abs_relative_diff.mean()


def squared_relative_difference(output, target, valid_mask=None):
    square_relative_diff = torch.pow(torch.abs(output - target), 2) / target
    square_relative_diff[~valid_mask] = 0
    n = valid_mask.sum((-1, -2))
    square_relative_diff = torch.sum(square_relative_diff, (-1, -2)) / n
    return square_relative_diff.mean()


def rmse_linear(output, target, valid_mask=None):
    diff = output - target
    diff[~valid_mask] = 0
    n = valid_mask.sum((-1, -2))
    diff2 = torch.pow(diff, 2)
    mse = torch.sum(diff2, (-1, -2)) / n
    rmse = torch.sqrt(mse)
    return rmse.mean()


def rmse_log(output, target, valid_mask=None):
    diff = torch.log(output) - torch.log(target)
    diff[~valid_mask] = 0
    n = valid_mask.sum((-1, -2))
    diff2 = torch.pow(diff, 2)
    mse = torch.sum(diff2, (-1, -2)) / n  # [B]
    rmse = torch.sqrt(mse)
    return rmse.mean()


def threshold_percentage(output, target, threshold_val, valid_mask=None):
    d1 = output / target
    d2 = target / output
    max_d1_d2 = torch.max(d1, d2)
    bit_mat = (max_d1_d2 < threshold_val).to(output.dtype)
    bit_mat = bit_mat * valid_mask.to(output.dtype)
    n = valid_mask.sum((-1, -2))
    n = torch.clamp(n, min=1)
    count_mat = torch.sum(bit_mat, (-1, -2))
    threshold_mat = count_mat / n.to(count_mat.dtype)
    return threshold_mat.mean()


def delta1_acc(pred, gt, valid_mask):
    return threshold_percentage(pred, gt, 1.25, valid_mask)


def delta2_acc(pred, gt, valid_mask):
    return threshold_percentage(pred, gt, 1.25**2, valid_mask)


def delta3_acc(pred, gt, valid_mask):
    return threshold_percentage(pred, gt, 1.25**3, valid_mask)


METRIC_FUNCS = [
    abs_relative_difference,
    squared_relative_difference,
    rmse_linear,
    rmse_log,
    delta1_acc,
    delta2_acc,
    delta3_acc,
]
KEYS = ["abs_rel", "sq_rel", "rmse", "rmse_log", "delta1", "delta2", "delta3"]


# ---- infer/inner_evaluation.py: evaluate_single_prediction ------------------------------------------


def evaluate_single_prediction(pred_depth, depth_raw, valid_mask, dataset, alignment, alignment_max_res=None):
    if len(pred_depth.shape) == 3:
        pred_depth = pred_depth.mean(0)  # [0,1]
    if pred_depth.shape != depth_raw.shape:
        pred_depth = cv2.resize(pred_depth, (depth_raw.shape[1], depth_raw.shape[0]), interpolation=cv2.INTER_LINEAR)
    if "least_square" == alignment:
        depth_pred, scale, shift = align_depth_least_square(
            gt_arr=depth_raw, pred_arr=pred_depth, valid_mask_arr=valid_mask, max_resolution=alignment_max_res
        )
    elif "log_space" == alignment:
        gt_log, gt_non_neg_mask = depth2log_space(depth=depth_raw, return_mask=True)
        pred_non_neg_mask = pred_depth > 0
        valid_nonnegative_mask = valid_mask & gt_non_neg_mask & pred_non_neg_mask
        log_space_pred, scale, shift = align_depth_least_square(
            gt_arr=gt_log, pred_arr=pred_depth, valid_mask_arr=valid_nonnegative_mask, max_resolution=alignment_max_res
        )
        log_space_pred = np.clip(log_space_pred, a_min=None, a_max=5.0)
        depth_pred = log_space2depth(log_space_pred)
    elif "least_square_disparity" == alignment:  # Marigold's eval.py (FE2E's function has no such branch)
        gt_disparity, gt_non_neg_mask = depth2disparity(depth=depth_raw, return_mask=True)
        pred_non_neg_mask = pred_depth > 0
        valid_nonnegative_mask = valid_mask & gt_non_neg_mask & pred_non_neg_mask
        disparity_pred, scale, shift = align_depth_least_square(
            gt_arr=gt_disparity,
            pred_arr=pred_depth,
            valid_mask_arr=valid_nonnegative_mask,
            max_resolution=alignment_max_res,
        )
        disparity_pred = np.clip(disparity_pred, a_min=1e-3, a_max=None)  # avoid 0 disparity
        depth_pred = disparity2depth(disparity_pred)
    depth_pred = np.clip(depth_pred, a_min=dataset.min_depth, a_max=dataset.max_depth)
    depth_pred = np.clip(depth_pred, a_min=1e-6, a_max=None)
    depth_pred_ts = torch.from_numpy(depth_pred)
    depth_raw_ts = torch.from_numpy(depth_raw)
    valid_mask_ts = torch.from_numpy(valid_mask)
    return [met_func(depth_pred_ts, depth_raw_ts, valid_mask_ts).item() for met_func in METRIC_FUNCS]


def evaluation_depth(engine, dataset, alignment):
    """The loop of ``evaluation_depth_custom_parallel`` on one GPU: metric means over images."""
    totals = []
    for index in range(len(dataset)):
        data = dataset[index]
        depth_raw = data["depth_raw_linear"].squeeze().numpy()
        valid_mask = data["valid_mask_raw"].squeeze().numpy()
        _, Lpred, _ = generate_image(engine, data["rgb"].unsqueeze(0))  # DataLoader batch of 1
        Lpred = Lpred[0].cpu().numpy()
        totals.append(evaluate_single_prediction(Lpred, depth_raw, valid_mask, dataset, alignment))
    return dict(zip(KEYS, np.mean(np.array(totals), axis=0).tolist(), strict=True))


# ---- infer/dataset/*.py: Marigold's depth loaders (directory datasets) -------------------------------


class BaseDepthDataset:
    def __init__(self, filename_ls_path, dataset_dir, min_depth, max_depth, has_filled_depth, **kwargs):
        self.dataset_dir = dataset_dir
        self.min_depth = min_depth
        self.max_depth = max_depth
        self.has_filled_depth = has_filled_depth
        with open(filename_ls_path) as f:
            self.filenames = [s.split() for s in f.readlines()]

    def __len__(self):
        return len(self.filenames)

    def __getitem__(self, index):
        rgb_rel_path, depth_rel_path, filled_rel_path = self._get_data_path(index)
        rasters = {}
        rasters.update(self._load_rgb_data(rgb_rel_path=rgb_rel_path))
        rasters.update(self._load_depth_data(depth_rel_path=depth_rel_path, filled_rel_path=filled_rel_path))
        rasters["valid_mask_raw"] = self._get_valid_mask(rasters["depth_raw_linear"]).clone()
        return rasters

    def _load_rgb_data(self, rgb_rel_path):
        _, rgb = self._read_image(rgb_rel_path)
        # input_process_image on a PIL image: F.to_tensor(image.convert("RGB"))
        rgb = torch.from_numpy(np.array(rgb.convert("RGB"))).permute(2, 0, 1).float().div(255)
        return {"rgb": rgb}

    def _load_depth_data(self, depth_rel_path, filled_rel_path):
        outputs = {}
        depth_raw = self._read_depth_file(depth_rel_path).squeeze()
        depth_raw_linear = torch.from_numpy(depth_raw).float().unsqueeze(0)  # [1, H, W]
        outputs["depth_raw_linear"] = depth_raw_linear.clone()
        return outputs

    def _get_data_path(self, index):
        filename_line = self.filenames[index]
        rgb_rel_path = filename_line[0]
        depth_rel_path = filename_line[1]
        filled_rel_path = filename_line[2] if self.has_filled_depth else None
        return rgb_rel_path, depth_rel_path, filled_rel_path

    def _read_image(self, img_rel_path):
        image = Image.open(os.path.join(self.dataset_dir, img_rel_path))
        image_arr = np.asarray(image)
        return image_arr, image

    def _read_depth_file(self, rel_path):
        depth_in, _ = self._read_image(rel_path)
        return depth_in

    def _get_valid_mask(self, depth: torch.Tensor):
        valid_mask = torch.logical_and((depth > self.min_depth), (depth < self.max_depth)).bool()
        return valid_mask


class NYUDataset(BaseDepthDataset):
    def __init__(self, eigen_valid_mask=True, **kwargs):
        super().__init__(min_depth=1e-3, max_depth=10.0, has_filled_depth=True, **kwargs)
        self.eigen_valid_mask = eigen_valid_mask

    def _read_depth_file(self, rel_path):
        depth_in, _ = self._read_image(rel_path)
        depth_decoded = depth_in / 1000.0
        return depth_decoded

    def _get_valid_mask(self, depth: torch.Tensor):
        valid_mask = super()._get_valid_mask(depth)
        if self.eigen_valid_mask:
            eval_mask = torch.zeros_like(valid_mask.squeeze()).bool()
            eval_mask[45:471, 41:601] = 1
            eval_mask.reshape(valid_mask.shape)
            valid_mask = torch.logical_and(valid_mask, eval_mask)
        return valid_mask


class KITTIDataset(BaseDepthDataset):
    def __init__(self, kitti_bm_crop=True, valid_mask_crop="eigen", **kwargs):
        super().__init__(min_depth=1e-5, max_depth=80, has_filled_depth=False, **kwargs)
        self.kitti_bm_crop = kitti_bm_crop
        self.valid_mask_crop = valid_mask_crop
        self.filenames = [f for f in self.filenames if "None" != f[1]]

    def _read_depth_file(self, rel_path):
        depth_in, _ = self._read_image(rel_path)
        depth_decoded = depth_in / 256.0
        return depth_decoded

    def _load_rgb_data(self, rgb_rel_path):
        rgb_data = super()._load_rgb_data(rgb_rel_path)
        if self.kitti_bm_crop:
            rgb_data = {k: self.kitti_benchmark_crop(v) for k, v in rgb_data.items()}
        return rgb_data

    def _load_depth_data(self, depth_rel_path, filled_rel_path):
        depth_data = super()._load_depth_data(depth_rel_path, filled_rel_path)
        if self.kitti_bm_crop:
            depth_data = {k: self.kitti_benchmark_crop(v) for k, v in depth_data.items()}
        return depth_data

    @staticmethod
    def kitti_benchmark_crop(input_img):
        KB_CROP_HEIGHT = 352
        KB_CROP_WIDTH = 1216
        height, width = input_img.shape[-2:]
        top_margin = int(height - KB_CROP_HEIGHT)
        left_margin = int((width - KB_CROP_WIDTH) / 2)
        if 2 == len(input_img.shape):
            out = input_img[top_margin : top_margin + KB_CROP_HEIGHT, left_margin : left_margin + KB_CROP_WIDTH]
        elif 3 == len(input_img.shape):
            out = input_img[:, top_margin : top_margin + KB_CROP_HEIGHT, left_margin : left_margin + KB_CROP_WIDTH]
        return out

    def _get_valid_mask(self, depth: torch.Tensor):
        valid_mask = super()._get_valid_mask(depth)  # [1, H, W]
        if self.valid_mask_crop is not None:
            eval_mask = torch.zeros_like(valid_mask.squeeze()).bool()
            gt_height, gt_width = eval_mask.shape
            if "garg" == self.valid_mask_crop:
                eval_mask[
                    int(0.40810811 * gt_height) : int(0.99189189 * gt_height),
                    int(0.03594771 * gt_width) : int(0.96405229 * gt_width),
                ] = 1
            elif "eigen" == self.valid_mask_crop:
                eval_mask[
                    int(0.3324324 * gt_height) : int(0.91351351 * gt_height),
                    int(0.0359477 * gt_width) : int(0.96405229 * gt_width),
                ] = 1
            eval_mask.reshape(valid_mask.shape)
            valid_mask = torch.logical_and(valid_mask, eval_mask)
        return valid_mask


class ETH3DDataset(BaseDepthDataset):
    HEIGHT, WIDTH = 4032, 6048

    def __init__(self, **kwargs):
        super().__init__(min_depth=1e-5, max_depth=torch.inf, has_filled_depth=False, **kwargs)

    def _read_depth_file(self, rel_path):
        depth_path = os.path.join(self.dataset_dir, rel_path)
        with open(depth_path, "rb") as file:
            binary_data = file.read()
        depth_decoded = np.frombuffer(binary_data, dtype=np.float32).copy()
        depth_decoded[depth_decoded == torch.inf] = 0.0
        depth_decoded = depth_decoded.reshape((self.HEIGHT, self.WIDTH))
        return depth_decoded


class DIODEDataset(BaseDepthDataset):
    def __init__(self, **kwargs):
        super().__init__(min_depth=0.6, max_depth=350, has_filled_depth=False, **kwargs)

    def _read_npy_file(self, rel_path):
        npy_path_or_content = os.path.join(self.dataset_dir, rel_path)
        data = np.load(npy_path_or_content).squeeze()[np.newaxis, :, :]
        return data

    def _read_depth_file(self, rel_path):
        depth = self._read_npy_file(rel_path)
        return depth

    def __getitem__(self, index):
        rgb_rel_path, depth_rel_path, mask_rel_path = self.filenames[index][:3]
        rasters = {}
        rasters.update(self._load_rgb_data(rgb_rel_path=rgb_rel_path))
        rasters.update(self._load_depth_data(depth_rel_path=depth_rel_path, filled_rel_path=None))
        mask = self._read_npy_file(mask_rel_path).astype(bool)
        mask = torch.from_numpy(mask).bool()
        rasters["valid_mask_raw"] = mask.clone()
        return rasters


class ScanNetDataset(BaseDepthDataset):
    def __init__(self, **kwargs):
        super().__init__(min_depth=1e-3, max_depth=10, has_filled_depth=False, **kwargs)

    def _read_depth_file(self, rel_path):
        depth_in, _ = self._read_image(rel_path)
        depth_decoded = depth_in / 1000.0
        return depth_decoded


DEPTH_DATASETS = {
    "nyu": NYUDataset,
    "kitti": KITTIDataset,
    "eth3d": ETH3DDataset,
    "diode": DIODEDataset,
    "scannet": ScanNetDataset,
}


# ---- infer/dataset_normal/*/__init__.py: DSINE's normal loaders --------------------------------------


def get_sample_nyuv2_scannet(dataset_path, sample_path):
    img_name, img_ext = sample_path.split("/")[1].split("_img")
    img_path = "%s/%s" % (dataset_path, sample_path)
    normal_png_path = img_path.replace("_img" + img_ext, "_normal.png")
    normal_npy_path = img_path.replace("_img" + img_ext, "_normal.npy")
    img = cv2.cvtColor(cv2.imread(img_path, cv2.IMREAD_UNCHANGED), cv2.COLOR_BGR2RGB)
    img = img.astype(np.float32) / 255.0
    if os.path.exists(normal_png_path):
        normal = cv2.cvtColor(cv2.imread(normal_png_path, cv2.IMREAD_UNCHANGED), cv2.COLOR_BGR2RGB)
        normal_mask = np.sum(normal, axis=2, keepdims=True) > 0
        normal = (normal.astype(np.float32) / 255.0) * 2.0 - 1.0
    elif os.path.exists(normal_npy_path):
        normal = np.load(normal_npy_path).astype(np.float32)
        normal[:, :, 0] *= -1.0
        normal_mask = np.linalg.norm(normal, axis=2, keepdims=True) > 1e-6
    return img, normal, normal_mask


def get_sample_ibims_sintel(dataset_path, sample_path):
    img_path = "%s/%s" % (dataset_path, sample_path)
    img_name, img_ext = sample_path.split("/")[1].split("_img")
    normal_path = img_path.replace("_img" + img_ext, "_normal.exr")
    img = cv2.cvtColor(cv2.imread(img_path, cv2.IMREAD_UNCHANGED), cv2.COLOR_BGR2RGB)
    img = img.astype(np.float32) / 255.0
    normal = cv2.cvtColor(cv2.imread(normal_path, cv2.IMREAD_UNCHANGED), cv2.COLOR_BGR2RGB)
    normal_mask = np.linalg.norm(normal, axis=2, keepdims=True) > 0.5
    return img, normal, normal_mask


def read_normal_oasis(path, h, w):
    normal_dict = pickle.load(open(path, "rb"))  # noqa: SIM115  as in the official loader (the tests write it)
    mask = np.zeros((h, w))
    normal = np.zeros((h, w, 3))
    min_y = normal_dict["min_y"]
    max_y = normal_dict["max_y"]
    min_x = normal_dict["min_x"]
    max_x = normal_dict["max_x"]
    roi_normal = normal_dict["normal"]
    normal[min_y : max_y + 1, min_x : max_x + 1, :] = roi_normal
    normal = normal.astype(np.float32)
    normal[:, :, 0] *= -1
    normal[:, :, 1] *= -1
    roi_mask = np.logical_or(
        np.logical_or(roi_normal[:, :, 0] != 0, roi_normal[:, :, 1] != 0), roi_normal[:, :, 2] != 0
    ).astype(np.float32)
    mask[min_y : max_y + 1, min_x : max_x + 1] = roi_mask
    mask = mask[:, :, None]
    mask = mask > 0.5
    return normal, mask


def get_sample_oasis(dataset_path, sample_path):
    img_name, img_ext = sample_path.split("/")[-1].split("_img")
    img_path = "%s/%s" % (dataset_path, sample_path)
    normal_path = img_path.replace("_img" + img_ext, "_normal.pkl")
    img = cv2.cvtColor(cv2.imread(img_path, cv2.IMREAD_UNCHANGED), cv2.COLOR_BGR2RGB)
    img = img.astype(np.float32) / 255.0
    h = img.shape[0]
    w = img.shape[1]
    normal, normal_mask = read_normal_oasis(normal_path, h, w)
    return img, normal, normal_mask


GET_SAMPLE = {
    "nyuv2": get_sample_nyuv2_scannet,
    "scannet": get_sample_nyuv2_scannet,
    "ibims": get_sample_ibims_sintel,
    "sintel": get_sample_ibims_sintel,
    "oasis": get_sample_oasis,
}


# ---- infer/util/normal_utils.py and the loop of evaluation_normal_custom_parallel ---------------------


def compute_normal_error(pred_norm, gt_norm):
    pred_error = torch.cosine_similarity(pred_norm, gt_norm, dim=1)
    pred_error = torch.clamp(pred_error, min=-1.0, max=1.0)
    pred_error = torch.acos(pred_error) * 180.0 / np.pi
    pred_error = pred_error.unsqueeze(1)  # (B, 1, ...)
    return pred_error


def compute_normal_metrics(total_normal_errors):
    total_normal_errors = total_normal_errors.detach().cpu().numpy()
    num_pixels = total_normal_errors.shape[0]
    return {
        "mean": np.average(total_normal_errors),
        "median": np.median(total_normal_errors),
        "rmse": np.sqrt(np.sum(total_normal_errors * total_normal_errors) / num_pixels),
        "a5": 100.0 * (np.sum(total_normal_errors < 5) / num_pixels),
        "a7.5": 100.0 * (np.sum(total_normal_errors < 7.5) / num_pixels),
        "a11.25": 100.0 * (np.sum(total_normal_errors < 11.25) / num_pixels),
        "a22.5": 100.0 * (np.sum(total_normal_errors < 22.5) / num_pixels),
        "a30": 100.0 * (np.sum(total_normal_errors < 30) / num_pixels),
    }


def evaluation_normal(engine, dataset_path, dataset_name, filenames):
    total_normal_errors = None
    for sample_path in filenames:
        img, normal, normal_mask = GET_SAMPLE[dataset_name](dataset_path, sample_path)
        # aug_basic.ToTensor, then the DataLoader's batch of 1
        img = torch.from_numpy(img).permute(2, 0, 1).unsqueeze(0)
        gt_norm = torch.from_numpy(normal).permute(2, 0, 1).unsqueeze(0)
        gt_norm_mask = torch.from_numpy(normal_mask).permute(2, 0, 1).unsqueeze(0)
        _, _, orig_H, orig_W = img.shape
        _, _, norm_out = generate_image(engine, img)
        norm_out = torch.nn.functional.interpolate(
            norm_out, size=(orig_H, orig_W), mode="bilinear", align_corners=False
        )
        norm = torch.linalg.norm(norm_out, axis=1, keepdims=True)
        norm[norm < 1e-9] = 1e-9
        norm_out = norm_out / norm
        pred_norm = norm_out[:, :3, :, :]
        pred_error = compute_normal_error(pred_norm, gt_norm)
        if total_normal_errors is None:
            total_normal_errors = pred_error[gt_norm_mask]
        else:
            total_normal_errors = torch.cat((total_normal_errors, pred_error[gt_norm_mask]), dim=0)
    return compute_normal_metrics(total_normal_errors)


# ---- prs-eth/Marigold v1.0: marigold_pipeline.py (resize_max_res, output resize) and eval.py -----------


def torchvision_resize_uint8(img, size):
    """torchvision 0.15 ``F.resize`` of a uint8 tensor, bilinear, ``antialias=True``: float, resize, round, cast."""
    out = Func.interpolate(img.float(), size=size, mode="bilinear", align_corners=False, antialias=True)
    return torch.round(out).to(torch.uint8)


def marigold_evaluation_depth(engine, dataset, alignment, alignment_max_res=None):
    """Marigold's ``infer.py`` (uint8 input resized with antialiasing to the engine's size; the prediction
    resized back to the input's size, antialiased, clipped to [0, 1]) then ``eval.py`` on it."""
    totals = []
    for index in range(len(dataset)):
        data = dataset[index]
        depth_raw = data["depth_raw_linear"].squeeze().numpy()
        valid_mask = data["valid_mask_raw"].squeeze().numpy()
        rgb = torch.round(data["rgb"] * 255).to(torch.uint8).unsqueeze(0)
        _, (w_new, h_new) = input_process_image(rgb.float())  # FE2E's processing size
        resized = torchvision_resize_uint8(rgb, (h_new, w_new)) if rgb.shape[-2:] != (h_new, w_new) else rgb
        rgb_norm = resized / 255.0 * 2.0 - 1.0
        depth_pred, _ = engine.run(rgb_norm, (w_new, h_new))
        depth_pred = Func.interpolate(depth_pred, size=rgb.shape[-2:], mode="bilinear", antialias=True)
        depth_pred = depth_pred.squeeze().cpu().numpy().clip(0, 1)
        totals.append(
            evaluate_single_prediction(depth_pred, depth_raw, valid_mask, dataset, alignment, alignment_max_res)
        )
    return dict(zip(KEYS, np.mean(np.array(totals), axis=0).tolist(), strict=True))
