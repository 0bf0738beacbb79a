//! burn-train's `Learner` trains a burn MLP on the embedded digits with a losskit loss.

#[test]
fn burn_trains_learner_reaches_95_percent_on_the_digits_with_a_losskit_loss() {
    let (accuracy, n) = losskit_burn_learner::train("sparse_categorical_crossentropy", 8).unwrap();
    assert_eq!(n, 360);
    assert!(accuracy >= 0.95, "validation accuracy {accuracy}");
}
