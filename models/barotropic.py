"""A small-grid hurricane analogue: barotropic vorticity on a beta plane.

Dynamics (e.g. Holton, *An Introduction to Dynamic Meteorology*, Eq. 11.14;
Chan & Williams 1987 for beta drift; Fiorino & Elsberry 1989)::

    d(zeta)/dt + J(psi, zeta + f) = 0,   f = f0 + beta y,   zeta = lap(psi),

with u = -psi_y, v = psi_x. The flow is split into a prescribed *steering*
environment and a perturbation (the vortex and everything the filter changes):

* environment: U(y) = a + b tanh((y - y_s)/L) (easterlies to the south,
  westerlies to the north) plus a uniform southerly V0 (the western flank of
  the subtropical high), plus a per-member uniform wind (u_bar, v_bar) taken
  from the state's domain-mean wind. A zonal U(y) is an exact steady solution;
  V0 and the member-mean wind are held fixed by an implied forcing that cancels
  their own tendency (the usual "vortex in a steering current" set-up).
* optionally a *steering field* S(x, y): the large-scale flow a storm feels where
  it is (Holland 1983), Gaussian-kernel (Nadaraya-Watson) interpolation of knots
  (lat, lon, u, v). Each member is advected by S averaged over its vortex core,
  weights (zeta'/zeta_s)^4 for zeta' > 0 over (1 + their sum): a uniform wind at
  each instant, so it translates the vortex and adds no vorticity, and it fades
  out for a member without a vortex stronger than zeta_s. No clock: a displaced
  member feels the flow at its own position, so ensemble tracks diverge as in real
  steering. experiments.fit_lee_steering fits the knots to a best track.
* perturbation zeta', exact nonlinear equation about that environment, written
  in flux form so that the domain integral of zeta' is conserved to round-off:

      d(zeta')/dt = -d/dx[(U + u_bar + u') zeta'] - d/dy[(V0 + v_bar + v') zeta']
                    - d/dx[psi' beta_eff(y)] - sponge(x, y) zeta' - nu (-lap)^p zeta',
      beta_eff = beta - U''(y)   (the meridional gradient of absolute vorticity).

Numerics: pseudo-spectral (torch.fft) on a doubly periodic f/beta plane,
2/3-rule dealiasing, classical RK4 sub-steps, hyperdiffusion of order 2p
applied exactly (integrating factor) after each sub-step, a Rayleigh sponge
that relaxes zeta' to zero within ``sponge_width`` degrees of the box edges (so
nothing re-enters through the periodic seams). Metres from degrees on the
plane tangent at the box centre: x = R cos(lat0) lon, y = R lat.

The *state* is (member, variable, lat, lon) with variables
("u10m", "v10m", "msl", "u850", "v850", "z850"), latitude descending, longitude
0..360 east. Only u850/v850 carry prognostic information: ``step`` takes their
curl (zeta') and domain mean (u_bar, v_bar) and integrates; every other channel
is re-diagnosed from the result, so a data-assimilation increment to msl, z850
or the 10 m winds alone is discarded at the next step. Diagnosis:

* z850 = z_ref + Phi_env + Phi', Phi' from the nonlinear balance equation
  (Charney 1955; gradient-wind balance for an axisymmetric vortex)
      lap(Phi') = f zeta' + beta psi'_y + 2 (psi'_xx psi'_yy - psi'_xy^2) - 2 U_y psi'_xx,
  its additive constant fixed so that Phi' averages to zero over the sponge
  frame; Phi_env geostrophic (dPhi/dy = -f U, dPhi/dx = f0 V0).
* msl = msl_ref + rho (Phi_env + Phi'), hydrostatic with rho = 1.2 kg m^-3.
* u10m, v10m = ``surface_wind_factor`` (0.8) x the 850 hPa winds.
"""

from __future__ import annotations

import datetime as _dt
import math
from dataclasses import dataclass

import numpy as np
import torch

from tfda.geo import EARTH_RADIUS_M as EARTH_RADIUS  # metres: the model works in SI units
from tfda.models.base import check_state

__all__ = ["BarotropicConfig", "BarotropicModel", "holland_wind", "vortex_state", "VARIABLES"]

OMEGA = 7.292e-5
VARIABLES: tuple[str, ...] = ("u10m", "v10m", "msl", "u850", "v850", "z850")


@dataclass(frozen=True)
class BarotropicConfig:
    """Grid box, environment and numerics of the analogue (degrees, m/s, hours);
    steering knots (module docstring) are (lat, lon east, u, v), () for none."""

    lat_north: float = 50.0
    lat_south: float = 10.0
    lon_west: float = 280.0          # 80 W, longitudes 0..360 east
    lon_east: float = 330.0          # 30 W
    resolution: float = 1.0          # degrees, both directions
    beta: bool = True                # False: f-plane (f = f0)
    steering_u_south: float = -2.5   # m/s, easterlies far to the south
    steering_u_north: float = 6.0    # m/s, westerlies far to the north
    steering_lat: float = 31.0       # centre of the tanh transition
    steering_width: float = 8.0      # degrees, tanh half-width (wide enough to be
    #                                  barotropically stable: beta - U'' > 0)
    steering_v: float = 0.25         # m/s, uniform southerly
    sponge_width: float = 5.0        # degrees from each edge; 0 disables the sponge
    sponge_hours: float = 3.0        # e-folding time at the very edge
    hyperdiffusion_order: int = 4    # p in (-lap)^p
    hyperdiffusion_hours: float = 3.0  # e-folding time of the largest retained wavenumber
    substeps: int = 18               # RK4 sub-steps per 6-hour step
    step_hours: float = 6.0
    z_ref: float = 14200.0           # m^2/s^2, environmental z850 at the box centre
    msl_ref: float = 101300.0        # Pa, environmental msl at the box centre
    rho: float = 1.2                 # kg/m^3, msl' = rho Phi'
    surface_wind_factor: float = 0.8
    steering_knots: tuple[tuple[float, float, float, float], ...] = ()
    steering_knot_km: float = 300.0
    steering_vorticity_scale: float = 1e-4   # s^-1

    def __post_init__(self) -> None:
        knots = tuple(tuple(float(v) for v in k) for k in self.steering_knots)
        object.__setattr__(self, "steering_knots", knots)  # JSON gives lists
        if any(len(k) != 4 for k in knots) or min(self.steering_knot_km,
                                                  self.steering_vorticity_scale) <= 0:
            raise ValueError("steering_knots must be (lat, lon, u, v) each, steering_knot_km "
                             "and steering_vorticity_scale > 0")
        if not self.lat_north > self.lat_south:
            raise ValueError("lat_north must exceed lat_south")
        if not self.lon_east > self.lon_west:
            raise ValueError("lon_east must exceed lon_west (0..360 east)")
        if self.resolution <= 0 or self.substeps < 1 or self.step_hours <= 0:
            raise ValueError("resolution, substeps and step_hours must be positive")
        for name in ("lat_north", "lat_south", "lon_west", "lon_east"):
            span = getattr(self, name) - (self.lat_south if "lat" in name else self.lon_west)
            if abs(span / self.resolution - round(span / self.resolution)) > 1e-6:
                raise ValueError(f"{name} must lie a whole number of `resolution` steps "
                                 "from the south-west corner")
        if self.steering_width <= 0 or self.sponge_width < 0 or self.sponge_hours <= 0:
            raise ValueError("steering_width, sponge_hours must be > 0, sponge_width >= 0")
        if self.hyperdiffusion_order < 1 or self.hyperdiffusion_hours <= 0:
            raise ValueError("hyperdiffusion_order >= 1 and hyperdiffusion_hours > 0 required")


def holland_wind(r: torch.Tensor, *, vmax: float, rmax: float, b: float = 1.5,
                 r_outer: float | None = None) -> torch.Tensor:
    """Tangential wind V(r) (m/s) of Holland (1980) without the Coriolis term:

        V = vmax sqrt((rmax/r)^b exp(1 - (rmax/r)^b)),

    times exp(-(r / r_outer)^4) when ``r_outer`` is given, which confines the
    circulation (zero net circulation far away, as a periodic domain needs).
    """
    x = (rmax / r.clamp_min(1e-3 * rmax)) ** b
    v = vmax * torch.sqrt(x * torch.exp(1.0 - x))
    if r_outer is not None:
        v = v * torch.exp(-((r / r_outer) ** 4))
    return v


class BarotropicModel:
    """Barotropic beta-plane hurricane analogue; satisfies models.base.ForecastModel."""

    variables: tuple[str, ...] = VARIABLES

    def __init__(self, config: BarotropicConfig | None = None, *,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"
                 ) -> None:
        self.config = cfg = config or BarotropicConfig()
        self.dtype = dtype
        res = cfg.resolution
        # cell centres: the box is exactly one period long, and box spans such as
        # 40 x 50 degrees give FFT-friendly sizes (a prime size like 41 is ~10x slower)
        ny = int(round((cfg.lat_north - cfg.lat_south) / res))
        nx = int(round((cfg.lon_east - cfg.lon_west) / res))
        self.lat = cfg.lat_north - (torch.arange(ny, dtype=torch.float64) + 0.5) * res
        self.lon = cfg.lon_west + (torch.arange(nx, dtype=torch.float64) + 0.5) * res
        self.dt = _dt.timedelta(hours=cfg.step_hours)
        self.lat0 = 0.5 * (cfg.lat_north + cfg.lat_south)
        self.lon0 = 0.5 * (cfg.lon_west + cfg.lon_east)
        phi0 = math.radians(self.lat0)
        self.f0 = 2 * OMEGA * math.sin(phi0)
        self.beta = 2 * OMEGA * math.cos(phi0) / EARTH_RADIUS if cfg.beta else 0.0
        self.dx = EARTH_RADIUS * math.cos(phi0) * math.radians(res)
        self.dy = EARTH_RADIUS * math.radians(res)
        self.substep_seconds = cfg.step_hours * 3600.0 / cfg.substeps
        self._build(ny, nx)
        self.to(device)

    # ------------------------------------------------------------------ set-up
    def _build(self, ny: int, nx: int) -> None:
        cfg, f64 = self.config, torch.float64
        y = EARTH_RADIUS * torch.deg2rad(self.lat - self.lat0)             # (ny,) metres
        x = EARTH_RADIUS * math.cos(math.radians(self.lat0)) * torch.deg2rad(self.lon - self.lon0)
        self.x, self.y = x, y
        # row index grows southward, hence the sign of ky
        kx = 2 * math.pi * torch.fft.rfftfreq(nx, d=self.dx, dtype=f64)
        ky = -2 * math.pi * torch.fft.fftfreq(ny, d=self.dy, dtype=f64)
        ikx, iky = kx.clone(), ky.clone()
        if nx % 2 == 0:
            ikx[-1] = 0.0       # the Nyquist mode has no well-defined derivative
        if ny % 2 == 0:
            iky[ny // 2] = 0.0
        kx2d, ky2d = kx[None, :], ky[:, None]
        k2 = kx2d**2 + ky2d**2
        self._ikx = (1j * ikx[None, :]).to(torch.complex128)
        self._iky = (1j * iky[:, None]).to(torch.complex128)
        self._kxx = -(kx2d**2) + 0 * ky2d
        self._kyy = -(ky2d**2) + 0 * kx2d
        self._kxy = -(kx2d * ky2d)
        inv = torch.where(k2 > 0, -1.0 / k2.clamp_min(1e-300), torch.zeros_like(k2))
        self._inv_lap = inv                                               # psi = inv * zeta
        jx = torch.arange(nx // 2 + 1, dtype=f64)[None, :]
        jy = torch.fft.fftfreq(ny, d=1.0 / ny, dtype=f64).abs()[:, None]
        self._dealias = ((jx < nx / 3.0) & (jy < ny / 3.0)).to(f64)
        kmax2 = float((k2 * self._dealias).max())
        p = cfg.hyperdiffusion_order
        rate = (k2 / kmax2) ** p / (cfg.hyperdiffusion_hours * 3600.0)
        self._hyper = torch.exp(-rate * self.substep_seconds) * self._dealias
        # environment
        width = EARTH_RADIUS * math.radians(cfg.steering_width)
        y_s = EARTH_RADIUS * math.radians(cfg.steering_lat - self.lat0)
        a = 0.5 * (cfg.steering_u_north + cfg.steering_u_south)
        b = 0.5 * (cfg.steering_u_north - cfg.steering_u_south)
        th = torch.tanh((y - y_s) / width)
        self.u_env = (a + b * th)[:, None]                                 # (ny, 1)
        u_yy = b * (-2 * th * (1 - th**2)) / width**2
        self.u_env_y = (b * (1 - th**2) / width)[:, None]
        self.beta_eff = (self.beta - u_yy)[:, None]
        self.f = (self.f0 + self.beta * y)[:, None]
        # geostrophic environmental geopotential: dPhi/dy = -f U, dPhi/dx = f0 V0
        yf = np.linspace(float(y.min()), float(y.max()), 40 * ny)
        uf = a + b * np.tanh((yf - y_s) / width)
        integrand = -(self.f0 + self.beta * yf) * uf
        cum = np.concatenate([[0.0], np.cumsum(0.5 * (integrand[1:] + integrand[:-1])
                                               * np.diff(yf))])
        cum -= np.interp(0.0, yf, cum)
        phi_y = torch.from_numpy(np.interp(y.numpy(), yf, cum))
        self.phi_env = phi_y[:, None] + self.f0 * cfg.steering_v * x[None, :]
        # sponge and the frame where Phi' is referenced to zero
        d_lat = torch.minimum(self.lat - cfg.lat_south, cfg.lat_north - self.lat)[:, None]
        d_lon = torch.minimum(self.lon - cfg.lon_west, cfg.lon_east - self.lon)[None, :]
        dist = torch.minimum(d_lat, d_lon)
        if cfg.sponge_width > 0:
            ramp = (1 - dist / cfg.sponge_width).clamp(0, 1) ** 2
            self.sponge = ramp / (cfg.sponge_hours * 3600.0)
        else:
            self.sponge = torch.zeros_like(dist)
        self.frame = (dist <= max(cfg.sponge_width, cfg.resolution) * 0.5).to(f64)
        self.steer_u, self.steer_v = self._steering_field(x, y)

    def _steering_field(self, x: torch.Tensor, y: torch.Tensor
                        ) -> tuple[torch.Tensor, torch.Tensor]:
        """(u_s, v_s) on the grid (ny, nx) from the knots; zeros when there are none."""
        cfg = self.config
        k = torch.tensor(cfg.steering_knots or [(0.0,) * 4], dtype=torch.float64)  # (K, 4)
        kx = EARTH_RADIUS * math.cos(math.radians(self.lat0)) * torch.deg2rad(
            (k[:, 1] - self.lon0 + 180.0) % 360.0 - 180.0)
        ky = EARTH_RADIUS * torch.deg2rad(k[:, 0] - self.lat0)
        d2 = (x[None, None, :] - kx[:, None, None])**2 + (y[None, :, None] - ky[:, None, None])**2
        # softmax: far from every knot the nearest one dominates instead of 0/0
        w = torch.softmax(-d2 / (2 * (cfg.steering_knot_km * 1e3) ** 2), dim=0)
        return (w * k[:, 2, None, None]).sum(0), (w * k[:, 3, None, None]).sum(0)
    _TENSORS = ("x", "y", "_ikx", "_iky", "_kxx", "_kyy", "_kxy", "_inv_lap", "_dealias",
                "_hyper", "u_env", "u_env_y", "beta_eff", "f", "phi_env", "sponge", "frame",
                "steer_u", "steer_v")

    def to(self, device: torch.device | str) -> BarotropicModel:
        """Move the model's precomputed operators to ``device`` (dtype follows ``self.dtype``)."""
        cdt = torch.complex64 if self.dtype == torch.float32 else torch.complex128
        for name in self._TENSORS:
            t = getattr(self, name)
            setattr(self, name, t.to(device=device, dtype=cdt if t.is_complex() else self.dtype))
        self.device = torch.device(device)
        return self

    # ------------------------------------------------------------------ spectral helpers
    def _fft(self, a: torch.Tensor) -> torch.Tensor:
        return torch.fft.rfft2(a, dim=(-2, -1))

    def _ifft(self, a: torch.Tensor) -> torch.Tensor:
        return torch.fft.irfft2(a, s=(self.lat.numel(), self.lon.numel()), dim=(-2, -1))

    def _tendency(self, zh: torch.Tensor, ubar: torch.Tensor, vbar: torch.Tensor
                  ) -> torch.Tensor:
        """d(zeta'_hat)/dt (flux form, dealiased) for zh (B, ny, nx//2+1)."""
        psih = zh * self._inv_lap
        phys = self._ifft(torch.stack([zh, -self._iky * psih, self._ikx * psih, psih], dim=1))
        zeta, u, v, psi = phys.unbind(1)
        us, vs = self.steering(zeta)
        fx = (self.u_env + ubar + us + u) * zeta + psi * self.beta_eff
        fy = (self.v_env + vbar + vs + v) * zeta
        spec = self._fft(torch.stack([fx, fy, self.sponge * zeta], dim=1))
        return -(self._ikx * spec[:, 0] + self._iky * spec[:, 1]) * self._dealias - spec[:, 2]

    def steering(self, zeta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Steering wind (u_s, v_s), each (B, 1, 1), felt by members with zeta' (B, lat, lon)."""
        if not self.config.steering_knots:  # skip the work; the field is zero
            return zeta[:, :1, :1] * 0, zeta[:, :1, :1] * 0
        w = (zeta / self.config.steering_vorticity_scale).clamp_min(0.0) ** 4
        norm = 1.0 + w.sum(dim=(-2, -1), keepdim=True)
        return ((w * self.steer_u).sum(dim=(-2, -1), keepdim=True) / norm,
                (w * self.steer_v).sum(dim=(-2, -1), keepdim=True) / norm)

    @property
    def v_env(self) -> float:
        return self.config.steering_v

    def _advance(self, zh: torch.Tensor, ubar: torch.Tensor, vbar: torch.Tensor,
                 n_sub: int) -> torch.Tensor:
        h = self.substep_seconds
        for _ in range(n_sub):
            k1 = self._tendency(zh, ubar, vbar)
            k2 = self._tendency(zh + 0.5 * h * k1, ubar, vbar)
            k3 = self._tendency(zh + 0.5 * h * k2, ubar, vbar)
            k4 = self._tendency(zh + h * k3, ubar, vbar)
            zh = (zh + (h / 6.0) * (k1 + 2 * k2 + 2 * k3 + k4)) * self._hyper
        return zh

    def advance_vorticity(self, zeta: torch.Tensor, substeps: int, *,
                          ubar: torch.Tensor | float = 0.0, vbar: torch.Tensor | float = 0.0
                          ) -> torch.Tensor:
        """Integrate perturbation vorticity zeta' (B, lat, lon) [1/s] over ``substeps``.

        The dynamical core without the state conversion: useful for tests of
        conservation and of analytic solutions (Rossby waves, translation).
        """
        if zeta.ndim != 3 or tuple(zeta.shape[1:]) != (self.lat.numel(), self.lon.numel()):
            raise ValueError(f"zeta must be (batch, {self.lat.numel()}, {self.lon.numel()}), "
                             f"got {tuple(zeta.shape)}")
        z = zeta.to(device=self.device, dtype=self.dtype)
        ub = torch.as_tensor(ubar, dtype=self.dtype, device=self.device).reshape(-1, 1, 1)
        vb = torch.as_tensor(vbar, dtype=self.dtype, device=self.device).reshape(-1, 1, 1)
        return self._ifft(self._advance(self._fft(z), ub, vb, int(substeps))).to(zeta.dtype)

    # ------------------------------------------------------------------ state <-> vorticity
    def analyse(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(zeta'_hat, u_bar, v_bar) from the state's u850/v850 (less the steering wind)."""
        u = x[:, 3].to(self.dtype) - self.u_env
        v = x[:, 4].to(self.dtype) - self.v_env
        zh = self._ikx * self._fft(v) - self._iky * self._fft(u)
        us, vs = self.steering(self._ifft(zh))
        ubar = u.mean(dim=(-2, -1), keepdim=True) - us
        vbar = v.mean(dim=(-2, -1), keepdim=True) - vs
        return zh, ubar, vbar

    def diagnose(self, zh: torch.Tensor, ubar: torch.Tensor, vbar: torch.Tensor
                 ) -> torch.Tensor:
        """The full state (B, 6, lat, lon) from zeta'_hat and the member-mean wind."""
        cfg = self.config
        psih = zh * self._inv_lap
        phys = self._ifft(torch.stack([zh, -self._iky * psih, self._ikx * psih,
                                       self._iky * psih, self._kxx * psih, self._kyy * psih,
                                       self._kxy * psih], dim=1))
        zeta, u, v, psi_y, pxx, pyy, pxy = phys.unbind(1)
        rhs = (self.f * zeta + self.beta * psi_y + 2 * (pxx * pyy - pxy**2)
               - 2 * self.u_env_y * pxx)
        phi = self._ifft(self._fft(rhs) * self._inv_lap)
        phi = phi - (phi * self.frame).sum(dim=(-2, -1), keepdim=True) / self.frame.sum()
        us, vs = self.steering(zeta)
        ubar, vbar = ubar + us, vbar + vs      # uniform winds: geostrophic heights alike
        geo = self.phi_env + phi - self.f0 * ubar * self.y[:, None] + self.f0 * vbar * self.x
        u850 = self.u_env + ubar + u
        v850 = self.v_env + vbar + v
        s = cfg.surface_wind_factor
        msl = cfg.msl_ref + cfg.rho * geo
        return torch.stack([s * u850, s * v850, msl, u850, v850, cfg.z_ref + geo], dim=1)

    # ------------------------------------------------------------------ protocol
    def step(self, x: torch.Tensor) -> torch.Tensor:
        """Advance (member, 6, lat, lon) by ``dt`` (``config.substeps`` RK4 sub-steps)."""
        check_state(self, x)
        zh, ubar, vbar = self.analyse(x.to(self.device))
        zh = self._advance(zh, ubar, vbar, self.config.substeps)
        return self.diagnose(zh, ubar, vbar).to(x.dtype)

    def vorticity(self, x: torch.Tensor) -> torch.Tensor:
        """Relative vorticity at 850 hPa (member, lat, lon) [1/s], environment included."""
        check_state(self, x)
        zh, _, _ = self.analyse(x.to(self.device))
        return self._ifft(zh) - self.u_env_y


def vortex_state(model: BarotropicModel, lat0: float, lon0: float, *, vmax: float = 40.0,
                 rmax: float = 150e3, b: float = 1.5, r_outer: float = 600e3,
                 members: int = 1) -> torch.Tensor:
    """A balanced state (members, 6, lat, lon): Holland vortex at (lat0, lon0 east) + environment.

    ``vmax`` m/s, ``rmax`` and ``r_outer`` in metres (see :func:`holland_wind`).
    The vortex winds are built on the model plane, turned into zeta' (their curl)
    and every channel is diagnosed from it, so the state is the model's own
    balanced state (msl from the nonlinear balance equation).
    """
    if not (model.config.lat_south <= lat0 <= model.config.lat_north
            and model.config.lon_west <= lon0 % 360.0 <= model.config.lon_east):
        raise ValueError(f"vortex centre ({lat0}N, {lon0}E) lies outside the model box")
    if vmax <= 0 or rmax <= 0 or r_outer <= rmax:
        raise ValueError("need vmax > 0, rmax > 0 and r_outer > rmax")
    f64 = torch.float64
    lx = model.dx * model.lon.numel()
    ly = model.dy * model.lat.numel()
    dx = EARTH_RADIUS * math.cos(math.radians(model.lat0)) * torch.deg2rad(
        model.lon - lon0 % 360.0)
    dy = EARTH_RADIUS * torch.deg2rad(model.lat - lat0)
    dx = (dx + 0.5 * lx) % lx - 0.5 * lx               # nearest periodic image
    dy = (dy + 0.5 * ly) % ly - 0.5 * ly
    xx, yy = dx[None, :].to(f64), dy[:, None].to(f64)
    r = torch.sqrt(xx**2 + yy**2)
    vt = holland_wind(r, vmax=vmax, rmax=rmax, b=b, r_outer=r_outer)
    rs = r.clamp_min(1.0)
    u = (-vt * yy / rs).to(model.dtype).to(model.device)
    v = (vt * xx / rs).to(model.dtype).to(model.device)
    zh = model._ikx * model._fft(v) - model._iky * model._fft(u)
    zero = torch.zeros(1, 1, 1, dtype=model.dtype, device=model.device)
    state = model.diagnose(zh[None], zero, zero)
    return state.expand(members, -1, -1, -1).clone()
