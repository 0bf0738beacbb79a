//! Callbacks: hook order, EarlyStopping, CSV vs History, TensorBoard files read back by an
//! independent reader, learning-curve PNG/SVG, NaN termination, learning-rate control,
//! checkpoints.

use losskit::{Result, Tensor};
use losskit_train::*;
use std::cell::RefCell;
use std::rc::Rc;

fn data(n: usize) -> (Tensor, Tensor) {
    let xs: Vec<f32> = (0..n * 2).map(|i| ((i * 37) % 11) as f32 / 11.0 - 0.5).collect();
    let ys: Vec<f32> = (0..n).map(|i| f32::from(u8::from(xs[2 * i] + xs[2 * i + 1] > 0.0))).collect();
    (Tensor::from_vec(xs, &[n, 2]).unwrap(), Tensor::from_vec(ys, &[n, 1]).unwrap())
}

fn model(lr: f64) -> Model {
    let mut m = Sequential::new()
        .seed(1)
        .add(Dense::new(4).activation("tanh").unwrap())
        .add(Dense::new(1).activation("sigmoid").unwrap());
    m.compile(Compile::new().optimizer(Optimizer::sgd(lr).unwrap()).loss("binary_crossentropy").metrics(&["accuracy"]))
        .unwrap();
    m
}

#[derive(Default)]
struct Recorder {
    events: Vec<String>,
    params: Option<FitParams>,
}

impl Callback for Recorder {
    fn set_params(&mut self, p: &FitParams) {
        self.params = Some(*p);
    }
    fn on_train_begin(&mut self, _: &Logs, _: &mut Model) -> Result<()> {
        self.events.push("train_begin".into());
        Ok(())
    }
    fn on_train_end(&mut self, _: &Logs, _: &mut Model) -> Result<()> {
        self.events.push("train_end".into());
        Ok(())
    }
    fn on_epoch_begin(&mut self, e: usize, _: &Logs, _: &mut Model) -> Result<()> {
        self.events.push(format!("epoch_begin {e}"));
        Ok(())
    }
    fn on_epoch_end(&mut self, e: usize, logs: &Logs, _: &mut Model) -> Result<()> {
        self.events.push(format!("epoch_end {e} {}", logs.keys().cloned().collect::<Vec<_>>().join(",")));
        Ok(())
    }
    fn on_train_batch_begin(&mut self, b: usize, _: &Logs, _: &mut Model) -> Result<()> {
        self.events.push(format!("batch_begin {b}"));
        Ok(())
    }
    fn on_train_batch_end(&mut self, b: usize, _: &Logs, _: &mut Model) -> Result<()> {
        self.events.push(format!("batch_end {b}"));
        Ok(())
    }
    fn on_test_begin(&mut self, _: &Logs, _: &mut Model) -> Result<()> {
        self.events.push("test_begin".into());
        Ok(())
    }
    fn on_test_batch_end(&mut self, b: usize, _: &Logs, _: &mut Model) -> Result<()> {
        self.events.push(format!("test_batch_end {b}"));
        Ok(())
    }
    fn on_test_end(&mut self, _: &Logs, _: &mut Model) -> Result<()> {
        self.events.push("test_end".into());
        Ok(())
    }
}

#[test]
fn hooks_run_in_keras_order() {
    let (x, y) = data(10);
    let mut rec = Recorder::default();
    let mut m = model(0.1);
    // 10 samples, 20% validation → 8 training (2 batches of 4), 2 validation (1 batch).
    m.fit(&x, &y, Fit::new().epochs(2).batch_size(4).validation_split(0.2).verbose(0).callback(&mut rec)).unwrap();
    let keys = "accuracy,loss,val_accuracy,val_loss";
    let mut expected = vec!["train_begin".to_string()];
    for e in 0..2 {
        expected.push(format!("epoch_begin {e}"));
        for b in 0..2 {
            expected.push(format!("batch_begin {b}"));
            expected.push(format!("batch_end {b}"));
        }
        expected.extend([
            "test_begin".into(),
            "test_batch_end 0".into(),
            "test_end".into(),
            format!("epoch_end {e} {keys}"),
        ]);
    }
    expected.push("train_end".into());
    assert_eq!(rec.events, expected);
    assert_eq!(rec.params, Some(FitParams { epochs: 2, initial_epoch: 0, steps: 2, verbose: 0 }));
    // initial_epoch resumes: only epoch 1 runs.
    let mut rec = Recorder::default();
    let h = m.fit(&x, &y, Fit::new().epochs(2).initial_epoch(1).batch_size(8).verbose(0).callback(&mut rec)).unwrap();
    assert_eq!(h.epochs, vec![1]);
    assert!(rec.events.contains(&"epoch_begin 1".to_string()) && !rec.events.contains(&"epoch_begin 0".to_string()));
}

/// Records the weights after every epoch.
#[derive(Default)]
struct Snapshots(Vec<Vec<Vec<f32>>>);

impl Callback for Snapshots {
    fn on_epoch_end(&mut self, _: usize, _: &Logs, m: &mut Model) -> Result<()> {
        self.0.push(m.get_weights().iter().map(|(_, t)| t.to_vec::<f32>()).collect());
        Ok(())
    }
}

#[test]
fn early_stopping_restores_the_best_weights() {
    let (x, y) = data(40);
    let mut m = model(0.5);
    // Sensible steps for 3 epochs, then a learning rate that wrecks the model.
    let mut schedule = LearningRateScheduler::new(|epoch, _lr| if epoch < 3 { 0.5 } else { 50.0 });
    let mut stop = EarlyStopping::new("val_loss").patience(2).restore_best_weights(true);
    let mut snaps = Snapshots::default();
    let h = m
        .fit(
            &x,
            &y,
            Fit::new()
                .epochs(20)
                .batch_size(8)
                .validation_split(0.25)
                .verbose(0)
                .callback(&mut schedule)
                .callback(&mut snaps)
                .callback(&mut stop),
        )
        .unwrap();
    let val = h.get("val_loss").unwrap();
    let best = stop.best_epoch.unwrap();
    let stopped = stop.stopped_epoch.expect("stopped early");
    assert!(h.epochs.len() < 20 && stopped == best + 2, "best {best}, stopped {stopped}, {val:?}");
    assert!(val.iter().all(|&v| v >= val[best]));
    let now: Vec<Vec<f32>> = m.get_weights().iter().map(|(_, t)| t.to_vec::<f32>()).collect();
    assert_eq!(now, snaps.0[best], "weights are those of the best epoch");
    assert_ne!(now, *snaps.0.last().unwrap());
}

#[test]
fn csv_and_history_agree_and_append_works() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("history.csv");
    let (x, y) = data(20);
    let mut m = model(0.1);
    let mut csv = CsvLogger::new(&path);
    let h =
        m.fit(&x, &y, Fit::new().epochs(3).batch_size(5).validation_split(0.2).verbose(0).callback(&mut csv)).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "epoch,accuracy,loss,val_accuracy,val_loss");
    assert_eq!(lines.len(), 4);
    let back = History::from_csv(&path).unwrap();
    assert_eq!(back, h, "CSV round trip equals the History");
    let mut csv = CsvLogger::new(&path).append(true);
    m.fit(&x, &y, Fit::new().epochs(2).batch_size(5).validation_split(0.2).verbose(0).callback(&mut csv)).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(text.lines().count(), 6);
    assert_eq!(text.lines().filter(|l| l.starts_with("epoch")).count(), 1);
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "no temporary files left");
}

/// An independent TFRecord/protobuf reader for the test: its own CRC-32C and varint decoding.
mod reader {
    fn crc32c(data: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &b in data {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 != 0 { (crc >> 1) ^ 0x82F6_3B78 } else { crc >> 1 };
            }
        }
        !crc
    }
    fn masked(data: &[u8]) -> u32 {
        let c = crc32c(data);
        c.rotate_right(15).wrapping_add(0xA282_EAD8)
    }
    /// Records of a file, checking both CRCs of each.
    pub fn records(bytes: &[u8]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < bytes.len() {
            let len_bytes = &bytes[i..i + 8];
            let len = u64::from_le_bytes(len_bytes.try_into().unwrap()) as usize;
            assert_eq!(u32::from_le_bytes(bytes[i + 8..i + 12].try_into().unwrap()), masked(len_bytes), "length CRC");
            let data = &bytes[i + 12..i + 12 + len];
            assert_eq!(
                u32::from_le_bytes(bytes[i + 12 + len..i + 16 + len].try_into().unwrap()),
                masked(data),
                "data CRC"
            );
            out.push(data.to_vec());
            i += 16 + len;
        }
        out
    }
    fn varint(b: &[u8], i: &mut usize) -> u64 {
        let mut v = 0u64;
        let mut shift = 0;
        loop {
            let byte = b[*i];
            *i += 1;
            v |= u64::from(byte & 0x7F) << shift;
            if byte & 0x80 == 0 {
                return v;
            }
            shift += 7;
        }
    }
    /// (field number, wire type, payload) of each field of a message.
    fn fields(b: &[u8]) -> Vec<(u64, u64, Vec<u8>)> {
        let mut i = 0;
        let mut out = Vec::new();
        while i < b.len() {
            let key = varint(b, &mut i);
            let (field, wire) = (key >> 3, key & 7);
            let payload = match wire {
                0 => varint(b, &mut i).to_le_bytes().to_vec(),
                1 => {
                    i += 8;
                    b[i - 8..i].to_vec()
                }
                2 => {
                    let n = varint(b, &mut i) as usize;
                    i += n;
                    b[i - n..i].to_vec()
                }
                5 => {
                    i += 4;
                    b[i - 4..i].to_vec()
                }
                w => panic!("wire type {w}"),
            };
            out.push((field, wire, payload));
        }
        out
    }
    /// An Event: (step, file_version, [(tag, value)]).
    pub fn event(data: &[u8]) -> (i64, Option<String>, Vec<(String, f32)>) {
        let (mut step, mut version, mut values) = (0i64, None, Vec::new());
        for (f, _, p) in fields(data) {
            match f {
                2 => step = i64::from_le_bytes(p[..8].try_into().unwrap()),
                3 => version = Some(String::from_utf8(p).unwrap()),
                5 => {
                    for (vf, _, vp) in fields(&p) {
                        assert_eq!(vf, 1);
                        let (mut tag, mut value) = (String::new(), f32::NAN);
                        for (ff, _, fp) in fields(&vp) {
                            match ff {
                                1 => tag = String::from_utf8(fp).unwrap(),
                                2 => value = f32::from_le_bytes(fp[..4].try_into().unwrap()),
                                _ => {}
                            }
                        }
                        values.push((tag, value));
                    }
                }
                _ => {}
            }
        }
        (step, version, values)
    }
}

fn event_file(dir: &std::path::Path) -> Vec<u8> {
    let entries: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert!(entries[0].file_name().unwrap().to_str().unwrap().starts_with("events.out.tfevents."));
    std::fs::read(&entries[0]).unwrap()
}

#[test]
fn tensorboard_files_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let (x, y) = data(20);
    let mut m = model(0.1);
    let mut tb = TensorBoard::new(dir.path()).update_freq(UpdateFreq::Batch(2));
    let h =
        m.fit(&x, &y, Fit::new().epochs(3).batch_size(4).validation_split(0.2).verbose(0).callback(&mut tb)).unwrap();
    let train = reader::records(&event_file(&dir.path().join("train")));
    let (_, version, _) = reader::event(&train[0]);
    assert_eq!(version.as_deref(), Some("brain.Event:2"));
    let events: Vec<_> = train[1..].iter().map(|r| reader::event(r)).collect();
    let epoch_events: Vec<_> = events.iter().filter(|e| e.2.iter().any(|(t, _)| t == "epoch_loss")).collect();
    assert_eq!(epoch_events.len(), 3);
    for (i, (step, _, values)) in epoch_events.iter().enumerate() {
        assert_eq!(*step, i as i64);
        let get = |tag: &str| values.iter().find(|(t, _)| t == tag).map(|v| v.1).unwrap();
        assert_eq!(get("epoch_loss"), h.get("loss").unwrap()[i] as f32);
        assert_eq!(get("epoch_accuracy"), h.get("accuracy").unwrap()[i] as f32);
        assert_eq!(get("epoch_learning_rate"), 0.1f32);
    }
    // 16 training samples / batch 4 = 4 batches per epoch, every 2nd logged: 6 batch events.
    let batch_steps: Vec<i64> =
        events.iter().filter(|e| e.2.iter().any(|(t, _)| t == "batch_loss")).map(|e| e.0).collect();
    assert_eq!(batch_steps, vec![2, 4, 6, 8, 10, 12]);
    let val = reader::records(&event_file(&dir.path().join("validation")));
    let vals: Vec<_> = val[1..].iter().map(|r| reader::event(r)).collect();
    assert_eq!(vals.len(), 3);
    for (i, (step, _, values)) in vals.iter().enumerate() {
        assert_eq!(*step, i as i64);
        assert!(
            values.iter().any(|(t, v)| t == "epoch_loss" && *v == h.get("val_loss").unwrap()[i] as f32),
            "{values:?}"
        );
        assert!(values.iter().all(|(t, _)| !t.contains("val_")));
    }
}

#[test]
fn learning_curves_are_redrawn_at_most_once_per_interval_and_at_the_end() {
    let dir = tempfile::tempdir().unwrap();
    let (x, y) = data(20);
    let mut m = model(0.1);
    let mut plot =
        PlotLearningCurves::new(dir.path().join("plots")).refresh_every(std::time::Duration::from_secs(3600));
    let svg = plot.svg_path();
    let seen = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
    let s = seen.clone();
    let read = svg.clone();
    let mut probe = LambdaCallback::new().on_epoch_end(move |_, _| {
        s.borrow_mut().push(std::fs::read_to_string(&read).unwrap());
        Ok(())
    });
    let fit = Fit::new().epochs(3).batch_size(5).verbose(0).callback(&mut plot).callback(&mut probe);
    m.fit(&x, &y, fit).unwrap();
    let seen = seen.borrow();
    // Drawn after the first epoch, not again within the hour, and once more at the end.
    assert_eq!(seen.len(), 3);
    assert_eq!(seen[0], seen[2], "no redraw after epochs 2 and 3");
    let last = std::fs::read_to_string(&svg).unwrap();
    assert_ne!(last, seen[2], "the end of training draws every epoch");
}

#[test]
fn learning_curves_png_has_one_panel_per_metric() {
    let dir = tempfile::tempdir().unwrap();
    let (x, y) = data(20);
    let mut m = model(0.1);
    let mut plot = PlotLearningCurves::new(dir.path().join("plots"));
    m.fit(&x, &y, Fit::new().epochs(3).batch_size(5).validation_split(0.2).verbose(0).callback(&mut plot)).unwrap();
    let decoder = png::Decoder::new(std::fs::File::open(plot.png_path()).unwrap());
    let reader = decoder.read_info().unwrap();
    let info = reader.info();
    // Two metrics (loss, accuracy) → two panels side by side.
    assert_eq!((info.width, info.height), (2 * callbacks::plot::PANEL_WIDTH, callbacks::plot::PANEL_HEIGHT));
    let svg = std::fs::read_to_string(plot.svg_path()).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("loss") && svg.contains("accuracy") && svg.contains("validation"));
    // Three metrics → three panels.
    let mut h = History::default();
    for e in 0..4 {
        h.push(
            e,
            &[("loss".to_string(), 1.0 / (e + 1) as f64), ("mae".into(), 0.5), ("accuracy".into(), 0.1 * e as f64)]
                .into(),
        );
    }
    let png_path = dir.path().join("three.png");
    assert_eq!(plot_history(&h, Some(&png_path), None).unwrap(), 3);
    let info = png::Decoder::new(std::fs::File::open(&png_path).unwrap()).read_info().unwrap().info().clone();
    assert_eq!(info.width, 3 * callbacks::plot::PANEL_WIDTH);
}

#[test]
fn terminate_on_nan_stops_after_the_batch() {
    let (x, y) = data(16);
    let mut m = Sequential::new().add(Dense::new(1));
    m.compile(
        Compile::new()
            .optimizer("sgd")
            .loss_fn("nan_loss", |t: &Tensor, p: &Tensor| p.sub(t)?.mean(&[-1], false)?.mul_scalar(f64::NAN)),
    )
    .unwrap();
    let mut stop = TerminateOnNaN::new();
    let h = m.fit(&x, &y, Fit::new().epochs(5).batch_size(4).verbose(0).nan_guard(false).callback(&mut stop)).unwrap();
    assert_eq!(stop.stopped_at, Some(0));
    assert_eq!(h.epochs, vec![0], "the epoch ends, no further epochs");
    assert!(h.get("loss").unwrap()[0].is_nan());
    let mut raise = TerminateOnNaN::new().raise_error(true);
    let err =
        m.fit(&x, &y, Fit::new().epochs(5).batch_size(4).verbose(0).nan_guard(false).callback(&mut raise)).unwrap_err();
    assert!(err.to_string().contains("invalid loss"), "{err}");
}

#[test]
fn learning_rate_control() {
    let (x, y) = data(16);
    let mut m = model(0.1);
    let mut halve = LearningRateScheduler::new(|epoch, lr| if epoch == 0 { lr } else { lr / 2.0 });
    m.fit(&x, &y, Fit::new().epochs(4).verbose(0).callback(&mut halve)).unwrap();
    assert!((m.optimizer_mut().unwrap().learning_rate() - 0.0125).abs() < 1e-12);
    // A learning rate too small to move the loss: a plateau, reduced after each patient epoch.
    let mut m = model(1e-12);
    let mut plateau = ReduceLROnPlateau::new("loss").unwrap().factor(0.5).unwrap().patience(1);
    m.fit(&x, &y, Fit::new().epochs(3).verbose(0).callback(&mut plateau)).unwrap();
    assert!((m.optimizer_mut().unwrap().learning_rate() - 0.25e-12).abs() < 1e-24);
    assert!(ReduceLROnPlateau::new("loss").unwrap().factor(1.5).is_err());
}

#[test]
fn checkpoints_and_lambda_callbacks() {
    let dir = tempfile::tempdir().unwrap();
    let (x, y) = data(20);
    let mut m = model(0.5);
    let pattern = dir.path().join("weights.{epoch:02d}.safetensors");
    let mut ckpt = ModelCheckpoint::new(pattern.to_str().unwrap()).monitor("loss").save_best_only(true);
    let every = dir.path().join("every.{epoch:02d}.safetensors");
    let mut ckpt_every = ModelCheckpoint::new(every.to_str().unwrap());
    let seen = Rc::new(RefCell::new(Vec::new()));
    let seen2 = seen.clone();
    let mut lambda = LambdaCallback::new().on_epoch_end(move |e, logs| {
        seen2.borrow_mut().push((e, logs["loss"]));
        Ok(())
    });
    m.fit(
        &x,
        &y,
        Fit::new()
            .epochs(4)
            .batch_size(5)
            .verbose(0)
            .callback(&mut ckpt)
            .callback(&mut ckpt_every)
            .callback(&mut lambda),
    )
    .unwrap();
    let seen = seen.borrow();
    assert_eq!(seen.len(), 4);
    assert!(!ckpt.saved.is_empty());
    assert!(ckpt.saved[0].ends_with("weights.01.safetensors"));
    let mut expected_saves = 0;
    let mut best = f64::INFINITY;
    for (_, l) in seen.iter() {
        if *l < best {
            best = *l;
            expected_saves += 1;
        }
    }
    assert_eq!(ckpt.saved.len(), expected_saves);
    // The last checkpoint of every epoch holds the final weights, bit for bit.
    assert_eq!(ckpt_every.saved.len(), 4);
    let mut other = model(0.1);
    other.build(&[2]).unwrap();
    other.load_weights(ckpt_every.saved.last().unwrap()).unwrap();
    let same = |a: &[(String, losskit::Tensor)], b: &[(String, losskit::Tensor)]| {
        a.len() == b.len() && a.iter().zip(b).all(|(p, q)| p.0 == q.0 && p.1.to_vec::<f32>() == q.1.to_vec::<f32>())
    };
    assert!(same(&other.get_weights(), &m.get_weights()), "reloaded weights differ from the model's");
    // The best-only checkpoint of epoch e holds what the every-epoch checkpoint of e holds.
    let best = ckpt.saved.last().unwrap();
    let epoch = best.file_name().unwrap().to_str().unwrap().trim_start_matches("weights.").to_string();
    other.load_weights(best).unwrap();
    let mut twin = model(0.1);
    twin.build(&[2]).unwrap();
    twin.load_weights(dir.path().join(format!("every.{epoch}"))).unwrap();
    assert!(same(&other.get_weights(), &twin.get_weights()), "best checkpoint {best:?}");
    // Monitoring a metric that is not logged is an error naming what is.
    let mut bad = EarlyStopping::new("val_loss");
    let err = m.fit(&x, &y, Fit::new().verbose(0).callback(&mut bad)).unwrap_err();
    assert!(err.to_string().contains("\"val_loss\" is not in the logs"), "{err}");
}

/// Dropout (the model's generator) and Adam (optimizer slots; with `ema`, Keras' `use_ema`
/// averages overwriting the weights every 5 updates), so a resume has state to restore.
fn resumable_model(units: usize, ema: bool) -> Model {
    let mut m = Sequential::new()
        .seed(5)
        .add(Dense::new(units).activation("relu").unwrap())
        .add(Dropout::new(0.3).unwrap())
        .add(Dense::new(1).activation("sigmoid").unwrap());
    let mut adam = Optimizer::adam(0.05).unwrap();
    if ema {
        adam = adam.with_ema(Some(Ema { momentum: 0.9, overwrite_frequency: Some(5) })).unwrap();
    }
    m.compile(Compile::new().optimizer(adam).loss("binary_crossentropy").metrics(&["accuracy"])).unwrap();
    m
}

/// How a backed-up run is set up.
struct BackedUp {
    freq: SaveFreq,
    /// A callback before the backup fails at this (epoch, batch): a crash.
    crash: Option<(usize, usize)>,
    units: usize,
    batch_size: usize,
    keep_backup: bool,
    /// Keras' `use_ema` on the optimizer.
    ema: bool,
}

impl Default for BackedUp {
    fn default() -> Self {
        BackedUp { freq: SaveFreq::Epoch, crash: None, units: 8, batch_size: 4, keep_backup: true, ema: false }
    }
}

/// The trained model, its History, and where the run resumed from.
type Finished = (Model, History, Option<(usize, usize)>);

/// Six epochs of [`resumable_model`] with every stateful callback and a backup in `dir/backup`.
fn backed_up_run(dir: &std::path::Path, setup: &BackedUp) -> Result<Finished> {
    backed_up_worker(dir, setup, None)
}

/// [`backed_up_run`] as one worker of `group` (when given): rank 0 alone has the CSV and
/// TensorBoard files, and crashes when `setup.crash` says; every worker has the other
/// callbacks and a backup on the same folder.
fn backed_up_worker(dir: &std::path::Path, setup: &BackedUp, group: Option<&ThreadGroup>) -> Result<Finished> {
    let chief = group.is_none_or(|g| g.rank() == 0);
    let (x, y) = data(40);
    let mut m = resumable_model(setup.units, setup.ema);
    let mut csv = CsvLogger::new(dir.join("history.csv"));
    let mut tb = TensorBoard::new(dir.join("logs"));
    let mut early = EarlyStopping::new("val_loss").patience(100).restore_best_weights(true);
    let mut plateau = ReduceLROnPlateau::new("val_loss")?.patience(1).factor(0.5)?;
    let epoch = Rc::new(std::cell::Cell::new(0));
    let seen = epoch.clone();
    let crash = setup.crash.filter(|_| chief);
    let mut crasher = LambdaCallback::new()
        .on_epoch_begin(move |e, _| {
            seen.set(e);
            Ok(())
        })
        .on_batch_end(move |b, _| match crash {
            Some(at) if at == (epoch.get(), b) => Err(losskit::Error::Config("simulated crash".into())),
            _ => Ok(()),
        });
    let mut backup =
        BackupAndRestore::new(dir.join("backup")).save_freq(setup.freq)?.delete_checkpoint(!setup.keep_backup);
    let mut fit = Fit::new().epochs(6).batch_size(setup.batch_size).validation_split(0.2).seed(9).verbose(0);
    if let Some(g) = group {
        fit = fit.distribute(g);
    }
    if chief {
        fit = fit.callback(&mut csv).callback(&mut tb);
    }
    let fit = fit.callback(&mut early).callback(&mut plateau).callback(&mut crasher).callback(&mut backup);
    let h = m.fit(&x, &y, fit)?;
    Ok((m, h, backup.resumed_from))
}

fn weight_bits(m: &Model) -> Vec<Vec<u32>> {
    m.get_weights().iter().map(|(_, t)| t.to_vec::<f32>().iter().map(|v| v.to_bits()).collect()).collect()
}

/// The training event file's scalars: (step, tag, value), wall times left out.
fn scalars(dir: &std::path::Path) -> Vec<(i64, Vec<(String, f32)>)> {
    let train = reader::records(&event_file(&dir.join("logs/train")));
    train[1..].iter().map(|r| reader::event(r)).map(|(s, _, v)| (s, v)).collect()
}

#[test]
fn backup_and_restore_resumes_bitwise_after_a_crash() {
    let reference = tempfile::tempdir().unwrap();
    let (m_ref, h_ref, from) = backed_up_run(reference.path(), &BackedUp::default()).unwrap();
    assert_eq!(from, None);
    assert_eq!(h_ref.epochs, (0..6).collect::<Vec<_>>());
    for (freq, crash, resumed_at) in [
        // The last backup is epoch 2's end: the rerun starts epoch 3 from its first batch.
        (SaveFreq::Epoch, (3, 2), (3, 0)),
        // 8 batches per epoch, a backup every 3: the last, at update 21, is after epoch 2's
        // batch 4; the rerun continues inside epoch 2 at batch 5.
        (SaveFreq::Batches(3), (2, 5), (2, 5)),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let setup = BackedUp { freq, crash: Some(crash), ..Default::default() };
        let err = backed_up_run(dir.path(), &setup).err().expect("the crash stops fit").to_string();
        assert!(err.contains("simulated crash"), "{err}");
        let (mut m, h, from) = backed_up_run(dir.path(), &BackedUp { freq, ..Default::default() }).unwrap();
        assert_eq!(from, Some(resumed_at), "{freq:?}");
        assert_eq!(weight_bits(&m), weight_bits(&m_ref), "{freq:?}: weights differ after the resume");
        assert_eq!(h, h_ref, "{freq:?}: history differs after the resume");
        let csv = |d: &std::path::Path| std::fs::read_to_string(d.join("history.csv")).unwrap();
        assert_eq!(csv(dir.path()), csv(reference.path()), "{freq:?}");
        assert_eq!(scalars(dir.path()), scalars(reference.path()), "{freq:?}");
        assert_eq!(m.optimizer_mut().unwrap().iterations(), 6 * 8);
    }
}

/// With Keras' `use_ema`, the averages are optimizer slots: backed up, restored, and the resumed
/// run ends on the uninterrupted run's bits (the final weights are the averages).
#[test]
fn backup_and_restore_resumes_use_ema_bitwise() {
    let ema = BackedUp { ema: true, freq: SaveFreq::Batches(3), ..Default::default() };
    let reference = tempfile::tempdir().unwrap();
    let (m_ref, h_ref, _) = backed_up_run(reference.path(), &ema).unwrap();
    let plain = tempfile::tempdir().unwrap();
    let (m_plain, ..) =
        backed_up_run(plain.path(), &BackedUp { freq: SaveFreq::Batches(3), ..Default::default() }).unwrap();
    assert_ne!(weight_bits(&m_ref), weight_bits(&m_plain), "the averages are the final weights");
    let dir = tempfile::tempdir().unwrap();
    let err = backed_up_run(dir.path(), &BackedUp { crash: Some((2, 5)), ..ema }).err().expect("the crash").to_string();
    assert!(err.contains("simulated crash"), "{err}");
    let (m, h, from) = backed_up_run(dir.path(), &ema).unwrap();
    assert_eq!(from, Some((2, 5)));
    assert_eq!(weight_bits(&m), weight_bits(&m_ref), "weights differ after the resume");
    assert_eq!(h, h_ref, "history differs after the resume");
}

/// `work` on each worker of a new ThreadGroup of `workers`; each worker's result.
fn on_workers<T: Send>(workers: usize, work: impl Fn(&ThreadGroup) -> T + Sync) -> Vec<T> {
    let groups = ThreadGroup::new(workers).unwrap();
    std::thread::scope(|s| {
        let handles: Vec<_> = groups.iter().map(|g| s.spawn(|| work(g))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

/// Each worker's weight bits, History and resume point, or its error.
type WorkerEnd = std::result::Result<(Vec<Vec<u32>>, History, Option<(usize, usize)>), String>;

fn two_workers(dir: &std::path::Path, setup: &BackedUp) -> Vec<WorkerEnd> {
    on_workers(2, |g| {
        backed_up_worker(dir, setup, Some(g)).map(|(m, h, from)| (weight_bits(&m), h, from)).map_err(|e| e.to_string())
    })
}

#[test]
fn data_parallel_workers_back_up_together_and_resume_bitwise() {
    let reference = tempfile::tempdir().unwrap();
    let ends = two_workers(reference.path(), &BackedUp::default());
    let (w_ref, h_ref, _) = ends[0].clone().unwrap();
    assert_eq!(ends[1].as_ref().unwrap().0, w_ref, "the workers hold the same weights");
    assert_eq!(h_ref.epochs.len(), 6);
    // Dropout draws differ between workers' streams, so a wrong stream would show.
    let (m_one, _, _) = backed_up_run(tempfile::tempdir().unwrap().path(), &BackedUp::default()).unwrap();
    assert_ne!(weight_bits(&m_one), w_ref);
    for (freq, crash, resumed_at) in [(SaveFreq::Epoch, (3, 2), (3, 0)), (SaveFreq::Batches(3), (2, 5), (2, 5))] {
        let dir = tempfile::tempdir().unwrap();
        let crashed = two_workers(dir.path(), &BackedUp { freq, crash: Some(crash), ..Default::default() });
        assert!(crashed[0].as_ref().unwrap_err().contains("simulated crash"), "{crashed:?}");
        assert!(crashed[1].as_ref().unwrap_err().contains("worker 0 of 2 failed"), "{crashed:?}");
        let ends = two_workers(dir.path(), &BackedUp { freq, ..Default::default() });
        for (rank, end) in ends.iter().enumerate() {
            let (w, h, from) = end.clone().unwrap();
            assert_eq!(from, Some(resumed_at), "{freq:?} rank {rank}");
            assert_eq!(w, w_ref, "{freq:?} rank {rank}: weights differ after the resume");
            assert_eq!(h, h_ref, "{freq:?} rank {rank}: history differs after the resume");
        }
        let csv = |d: &std::path::Path| std::fs::read_to_string(d.join("history.csv")).unwrap();
        assert_eq!(csv(dir.path()), csv(reference.path()), "{freq:?}");
        assert_eq!(scalars(dir.path()), scalars(reference.path()), "{freq:?}");
    }
}

#[test]
fn a_backup_resumes_only_with_as_many_workers_as_made_it() {
    let dir = tempfile::tempdir().unwrap();
    let crash = BackedUp { crash: Some((2, 0)), ..Default::default() };
    assert!(two_workers(dir.path(), &crash)[0].is_err());
    let backup = dir.path().join("backup/backup.safetensors");
    let before = std::fs::read(&backup).unwrap();
    assert_eq!(BackupAndRestore::new(dir.path().join("backup")).weights().unwrap().unwrap().workers, 2);
    let err = backed_up_run(dir.path(), &BackedUp::default()).err().unwrap().to_string();
    assert!(err.contains("data-parallel workers 2, this fit has 1"), "{err}");
    let three =
        on_workers(3, |g| backed_up_worker(dir.path(), &BackedUp::default(), Some(g)).err().map(|e| e.to_string()));
    assert!(three[0].as_deref().unwrap().contains("data-parallel workers 2, this fit has 3"), "{three:?}");
    assert_eq!(std::fs::read(&backup).unwrap(), before, "a refused resume leaves the backup alone");
}

#[test]
fn workers_without_the_same_backup_callback_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let errs = on_workers(2, |g| {
        let (x, y) = data(40);
        let mut m = resumable_model(8, false);
        let mut backup = BackupAndRestore::new(dir.path().join("backup"));
        let mut fit = Fit::new().epochs(1).verbose(0).distribute(g);
        if g.rank() == 0 {
            fit = fit.callback(&mut backup);
        }
        m.fit(&x, &y, fit).err().map(|e| e.to_string())
    });
    assert!(errs[0].as_deref().unwrap().contains("1 of 2 data-parallel workers have a BackupAndRestore"), "{errs:?}");
}

#[test]
fn backup_is_deleted_when_training_ends_and_a_fresh_run_starts_without_one() {
    let dir = tempfile::tempdir().unwrap();
    let setup = BackedUp { keep_backup: false, ..Default::default() };
    let (_, h, from) = backed_up_run(dir.path(), &setup).unwrap();
    assert_eq!(from, None);
    assert_eq!(h.epochs.len(), 6);
    assert!(!dir.path().join("backup/backup.safetensors").exists());
    // A crash keeps it; the rerun resumes, then deletes it.
    let crashed = BackedUp { crash: Some((1, 0)), ..setup };
    assert!(backed_up_run(dir.path(), &crashed).is_err());
    assert!(dir.path().join("backup/backup.safetensors").exists());
    let (_, h2, from) = backed_up_run(dir.path(), &setup).unwrap();
    assert_eq!(from, Some((1, 0)));
    assert_eq!(h2.epochs, h.epochs);
    assert!(!dir.path().join("backup/backup.safetensors").exists());
}

#[test]
fn damaged_or_foreign_backups_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    assert!(backed_up_run(dir.path(), &BackedUp { crash: Some((2, 0)), ..Default::default() }).is_err());
    let file = dir.path().join("backup/backup.safetensors");
    let good = std::fs::read(&file).unwrap();
    let expect_error = |setup: &BackedUp, wants: &[&str]| {
        let e = backed_up_run(dir.path(), setup).err().expect("a bad backup is an error").to_string();
        for w in wants {
            assert!(e.contains(w), "{e:?} lacks {w:?}");
        }
        assert!(e.contains("backup.safetensors"), "{e}");
    };
    // Another model (a wider hidden layer), another batch size.
    expect_error(&BackedUp { units: 9, ..Default::default() }, &["another run", "dense/kernel [2, 8]", "[2, 9]"]);
    expect_error(&BackedUp { batch_size: 5, ..Default::default() }, &["batch_size 4", "this fit has 5"]);
    // Truncated.
    std::fs::write(&file, &good[..good.len() / 2]).unwrap();
    expect_error(&BackedUp::default(), &["cannot be used", "truncated"]);
    // Another format version (the metadata edited in place).
    let mut edited = good.clone();
    let key = b"\"version\":\"1\"";
    let at = edited.windows(key.len()).position(|w| w == key).expect("the version in the metadata");
    edited[at + key.len() - 2] = b'7';
    std::fs::write(&file, &edited).unwrap();
    expect_error(&BackedUp::default(), &["version \"7\"", "reads version 1"]);
    // Not a backup at all: a weights file.
    let mut m = resumable_model(8, false);
    m.fit(&data(40).0, &data(40).1, Fit::new().verbose(0)).unwrap();
    m.save_weights(&file).unwrap();
    expect_error(&BackedUp::default(), &["not a losskit backup"]);
    // The intact backup still resumes.
    std::fs::write(&file, &good).unwrap();
    assert_eq!(backed_up_run(dir.path(), &BackedUp::default()).unwrap().2, Some((2, 0)));
}
